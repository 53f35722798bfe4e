"""The withdrawal routes on the real commission app (real database, broker, Redis): status
codes, the error envelope, idempotent replays and the CSV exports."""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest

from libs.common.db.engine import Database, Tx
from libs.common.db.migrations import migrate
from libs.common.ids import IdGenerator
from libs.common.runtime import create_service_app
from services.commission.app import SPEC
from services.commission.context import CommissionServiceSettings
from services.commission.ledger import PLATFORM_EXPENSE, Transfer, post_transfers, promoter_account
from services.commission.migrations import MIGRATIONS
from services.commission.models import tables_for
from tests.withdrawals.conftest import CARD, ID_NUMBER

ADMIN_KEY = "withdrawal-test-admin"
YUAN = 100


@pytest.fixture
async def client(
    database_url: str, db: Database, broker: str, redis_url: str, key_prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    await migrate(db, MIGRATIONS)
    settings = CommissionServiceSettings(
        service_name="commission",
        database_url=database_url,
        redis_url=redis_url,
        redis_key_prefix=key_prefix,
        kafka_bootstrap_servers=broker,
        node_id=21,
        run_workers=False,
        bootstrap_admin_key=ADMIN_KEY,
    )
    app = create_service_app(SPEC, settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://commission",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ) as http:
            yield http


async def fund(db: Database, promoter_id: int, amount: int) -> None:
    async def work(tx: Tx) -> None:
        await post_transfers(
            tx,
            IdGenerator(22),
            tables_for("Asia/Shanghai"),
            [
                Transfer(
                    kind="settle",
                    key=f"test-fund:{secrets.token_hex(8)}",
                    debit=PLATFORM_EXPENSE,
                    credit=promoter_account(promoter_id, "available"),
                    amount=amount,
                    currency="CNY",
                )
            ],
        )

    await db.run(work)


async def test_withdrawal_flow_over_http(client: httpx.AsyncClient, db: Database) -> None:
    promoter = IdGenerator(23).next_id()
    await fund(db, promoter, 5_000 * YUAN)
    payee = await client.put(
        f"/api/v1/promoters/{promoter}/payee",
        json={"real_name": "李四", "id_number": ID_NUMBER, "bank_card": CARD},
    )
    assert payee.status_code == 200, payee.text
    assert payee.json()["bank_card"] == CARD  # an admin may read personal data
    assert payee.json()["channels"] == ["bank", "manual"]

    body = {
        "promoter_id": str(promoter),
        "amount": 3_000 * YUAN,
        "channel": "bank",
        "idempotency_key": "x1",
    }
    created = await client.post("/api/v1/withdrawals", json=body)
    assert created.status_code == 201, created.text
    withdrawal = created.json()
    assert (withdrawal["fee_amount"], withdrawal["tax_amount"], withdrawal["net_amount"]) == (
        0,
        44_000,
        256_000,
    )
    assert withdrawal["status"] == "pending" and isinstance(withdrawal["id"], str)
    replay = await client.post("/api/v1/withdrawals", json=body)
    assert (replay.status_code, replay.json()["id"]) == (200, withdrawal["id"])

    queue = (await client.get("/api/v1/withdrawals", params={"status": "pending"})).json()
    assert [w["id"] for w in queue["items"]] == [withdrawal["id"]]
    approved = await client.post(f"/api/v1/withdrawals/{withdrawal['id']}/approve")
    assert approved.json()["status"] == "approved"

    exported = await client.get("/api/v1/withdrawals/transfer-file", params={"channel": "bank"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig"))))
    assert [(line["account"], line["amount"]) for line in lines] == [(CARD, "2560.00")]

    paid = await client.post(
        f"/api/v1/withdrawals/{withdrawal['id']}/mark-paid", json={"voucher_reference": "B-1"}
    )
    assert paid.json()["status"] == "paid"
    month = paid.json()["tax_month"]
    report = await client.get(f"/api/v1/tax/reports/{month}")
    assert report.status_code == 200
    assert f"{promoter},李四,{ID_NUMBER},{month},1,300000,220000,44000" in report.content.decode(
        "utf-8-sig"
    )
    statement = (
        await client.get(f"/api/v1/accounts/{promoter}/statement", params={"month": month})
    ).json()
    assert statement["closing"]["paid_out_amount"] == 256_000
    assert statement["closing"]["available_amount"] == 2_000 * YUAN


async def test_refusals_over_http(client: httpx.AsyncClient, db: Database) -> None:
    promoter = IdGenerator(24).next_id()
    await fund(db, promoter, 100 * YUAN)
    bad_id = await client.put(
        f"/api/v1/promoters/{promoter}/payee", json={"real_name": "王五", "id_number": "123"}
    )
    assert (bad_id.status_code, bad_id.json()["error"]["code"]) == (400, "payee.invalid_id_number")
    no_payee = await client.post(
        "/api/v1/withdrawals",
        json={
            "promoter_id": str(promoter),
            "amount": 100,
            "channel": "bank",
            "idempotency_key": "n",
        },
    )
    assert (no_payee.status_code, no_payee.json()["error"]["code"]) == (
        409,
        "withdrawal.payee_missing",
    )
    await client.put(
        f"/api/v1/promoters/{promoter}/payee",
        json={"real_name": "王五", "id_number": ID_NUMBER, "bank_card": CARD},
    )
    too_much = await client.post(
        "/api/v1/withdrawals",
        json={
            "promoter_id": str(promoter),
            "amount": 101 * YUAN,
            "channel": "bank",
            "idempotency_key": "m",
        },
    )
    assert too_much.status_code == 409
    assert too_much.json()["error"] == {
        "code": "withdrawal.insufficient_balance",
        "message": "the available balance does not cover this withdrawal",
        "details": {"available_amount": 100 * YUAN},
    }
    malformed = await client.post(
        "/api/v1/withdrawals", json={"promoter_id": str(promoter), "amount": -1}
    )
    assert (malformed.status_code, malformed.json()["error"]["code"]) == (422, "request.invalid")
    missing = await client.get("/api/v1/withdrawals/12345")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "withdrawal.not_found")
    bad = await client.get("/api/v1/withdrawals/abc")
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "request.bad_id")
    bad_month = await client.get("/api/v1/tax/reports/202613")
    assert (bad_month.status_code, bad_month.json()["error"]["code"]) == (400, "request.bad_month")
    no_reason = await client.post("/api/v1/withdrawals/12345/reject", json={})
    assert no_reason.status_code == 422
    anonymous = await client.get("/api/v1/withdrawals", headers={"Authorization": ""})
    assert anonymous.status_code == 401
