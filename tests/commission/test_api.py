"""The commission API on a real app (real database, broker and Redis): rules and compliance
refusals, reads of records and balances, the admin settlement run and ledger verification."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import text

from libs.common.db.engine import Database
from libs.common.db.migrations import migrate
from libs.common.ids import IdGenerator
from services.commission.app import SPEC
from services.commission.context import CommissionContext, CommissionServiceSettings
from services.commission.migrations import MIGRATIONS
from services.commission.models import tables_for
from tests.commission.helpers import Commission, fresh_id, item, paid_order, refund

ADMIN_KEY = "commission-test-admin"


@pytest.fixture
async def client(
    database_url: str, db: Database, broker: str, redis_url: str, key_prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    from libs.common.runtime import create_service_app

    await migrate(db, MIGRATIONS)
    settings = CommissionServiceSettings(
        service_name="commission",
        database_url=database_url,
        redis_url=redis_url,
        redis_key_prefix=key_prefix,
        kafka_bootstrap_servers=broker,
        node_id=11,
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


@pytest.fixture
def service(db: Database) -> Commission:
    return Commission(db, CommissionContext(IdGenerator(12), tables_for("Asia/Shanghai")))


async def test_rules_are_created_listed_and_deactivated(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/api/v1/commission/rules",
        json={
            "scope": "default",
            "levels": [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}],
        },
    )
    assert created.status_code == 201, created.text
    rule = created.json()
    assert (rule["scope"], rule["version"], rule["active"]) == ("default", 1, True)
    assert isinstance(rule["id"], str)
    category = await client.post(
        "/api/v1/commission/rules",
        json={"scope": "category", "key": "books", "levels": [{"level": 1, "fixed_amount": 200}]},
    )
    assert category.status_code == 201
    listed = (await client.get("/api/v1/commission/rules")).json()["items"]
    assert [(r["scope"], r["key"]) for r in listed] == [("category", "books"), ("default", None)]
    gone = await client.delete(f"/api/v1/commission/rules/{category.json()['id']}")
    assert gone.status_code == 200 and gone.json()["active"] is False
    listed = (await client.get("/api/v1/commission/rules")).json()["items"]
    assert [r["scope"] for r in listed] == ["default"]
    history = (await client.get("/api/v1/commission/rules?history=true")).json()["items"]
    assert len(history) == 2
    missing = await client.delete("/api/v1/commission/rules/123456789")
    assert (missing.status_code, missing.json()["error"]["code"]) == (
        404,
        "commission.rule_not_found",
    )
    bad = await client.delete("/api/v1/commission/rules/abc")
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "request.bad_id")


async def test_compliance_refuses_rules_and_saves_nothing(client: httpx.AsyncClient) -> None:
    three_levels = {
        "scope": "default",
        "levels": [
            {"level": 1, "rate_bps": 1000},
            {"level": 2, "rate_bps": 500},
            {"level": 3, "rate_bps": 100},
        ],
    }
    refused = await client.post("/api/v1/commission/rules", json=three_levels)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "compliance.too_many_levels"
    too_rich = {
        "scope": "default",
        "levels": [{"level": 1, "rate_bps": 2500}, {"level": 2, "rate_bps": 600}],
    }
    refused = await client.post("/api/v1/commission/rules", json=too_rich)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "compliance.total_rate_exceeded"
    # Paying for a recruit is not something a rule can say.
    recruit = {"scope": "default", "levels": [{"level": 1, "per_bind_amount": 500}]}
    assert (await client.post("/api/v1/commission/rules", json=recruit)).status_code == 422
    both = {"scope": "default", "levels": [{"level": 1, "rate_bps": 100, "fixed_amount": 5}]}
    refused = await client.post("/api/v1/commission/rules", json=both)
    assert (refused.status_code, refused.json()["error"]["code"]) == (
        400,
        "commission.rule_invalid",
    )
    assert (await client.get("/api/v1/commission/rules?history=true")).json()["items"] == []
    # global allows 3 levels up to its configurable cap.
    assert (
        await client.put("/api/v1/settings/commission", json={"compliance_profile": "global"})
    ).status_code == 200
    assert (await client.post("/api/v1/commission/rules", json=three_levels)).status_code == 201


async def test_stricter_profile_refused_while_rules_break_it(client: httpx.AsyncClient) -> None:
    two = await client.post(
        "/api/v1/commission/rules",
        json={
            "scope": "default",
            "levels": [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}],
        },
    )
    refused = await client.put(
        "/api/v1/settings/commission", json={"compliance_profile": "cn-wechat"}
    )
    assert refused.status_code == 409
    body = refused.json()["error"]
    assert body["code"] == "compliance.rules_in_force_violate_profile"
    assert body["details"]["rules"][0]["rule_id"] == two.json()["id"]
    assert (await client.get("/api/v1/settings/commission")).json()["compliance_profile"] == "cn"
    await client.delete(f"/api/v1/commission/rules/{two.json()['id']}")
    allowed = await client.put(
        "/api/v1/settings/commission", json={"compliance_profile": "cn-wechat"}
    )
    assert allowed.status_code == 200
    again = await client.post(
        "/api/v1/commission/rules",
        json={
            "scope": "default",
            "levels": [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}],
        },
    )
    assert again.json()["error"]["code"] == "compliance.too_many_levels"
    assert (
        await client.put("/api/v1/settings/commission", json={"frozen_days": 400})
    ).status_code == 422


async def test_reads_settlement_and_verify(client: httpx.AsyncClient, service: Commission) -> None:
    await service.settings(frozen_days=0)
    await service.rule("default", [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}])
    parent, grandparent = fresh_id(), fresh_id()
    orders = [paid_order([parent, grandparent], [item(10_000 + 10 * i)]) for i in range(3)]
    await service.pay(*orders)
    lines = (await client.get(f"/api/v1/orders/{orders[0].order_id}/commissions")).json()["items"]
    assert [
        (x["level"], x["beneficiary_id"], x["base_amount"], x["rate_bps"], x["amount"], x["status"])
        for x in lines
    ] == [
        (1, str(parent), 10_000, 1000, 1_000, "frozen"),
        (2, str(grandparent), 10_000, 500, 500, "frozen"),
    ]
    assert lines[0]["rule_version"] == 1 and lines[0]["unfreeze_at"] is None
    one = await client.get(f"/api/v1/commissions/{lines[0]['id']}")
    assert one.json()["amount"] == 1_000
    # A promoter's records, newest first, two per page.
    first = (await client.get(f"/api/v1/commissions?beneficiary_id={parent}&limit=2")).json()
    assert [x["order_id"] for x in first["items"]] == [
        str(orders[2].order_id),
        str(orders[1].order_id),
    ]
    second = (
        await client.get(
            f"/api/v1/commissions?beneficiary_id={parent}&limit=2&cursor={first['next_cursor']}"
        )
    ).json()
    assert [x["order_id"] for x in second["items"]] == [str(orders[0].order_id)]
    assert second["next_cursor"] is None
    bad = await client.get(f"/api/v1/commissions?beneficiary_id={parent}&status=paid")
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "commission.bad_status")
    account = (await client.get(f"/api/v1/accounts/{parent}")).json()
    assert account == {
        "promoter_id": str(parent),
        "frozen_amount": 3_003,
        "available_amount": 0,
        "withdrawing_amount": 0,
        "paid_out_amount": 0,
        "currency": "CNY",
    }
    nobody = (await client.get(f"/api/v1/accounts/{fresh_id()}")).json()
    assert nobody["frozen_amount"] == 0 and nobody["available_amount"] == 0
    for order in orders[:2]:
        await service.complete(order, datetime.now(UTC))
    await service.refund(refund(orders[1], fresh_id(), {orders[1].items[0].item_id: 5_000}))
    run = await client.post("/api/v1/settlements/run")
    assert run.json() == {
        "orders_settled": 2,
        "records_settled": 4,
        "amount": 1_000 + 500 + 500 + 250,
    }
    assert (await client.post("/api/v1/settlements/run")).json()["orders_settled"] == 0
    account = (await client.get(f"/api/v1/accounts/{parent}")).json()
    assert (account["frozen_amount"], account["available_amount"]) == (1_002, 1_500)
    report = (await client.get("/api/v1/ledger/verify")).json()
    assert report["ok"] is True
    assert report["ledger_total"] == 0
    assert report["platform_balances"] == {"platform:expense": -(3_003 + 1_501 - 501 - 250)}


async def test_ledger_refuses_edits_and_verify_finds_tampering(
    client: httpx.AsyncClient, service: Commission, db: Database
) -> None:
    await service.rule("default", [{"level": 1, "rate_bps": 1000}])
    parent = fresh_id()
    await service.pay(paid_order([parent], [item(10_000)]), paid_order([parent], [item(20_000)]))
    table = tables_for("Asia/Shanghai").flows.for_time(datetime.now(UTC)).name
    for statement in (f"UPDATE {table} SET amount = amount + 1", f"DELETE FROM {table}"):
        with pytest.raises(Exception, match="append-only"):
            async with db.primary.begin() as conn:
                await conn.execute(text(statement))
    # Someone with DDL rights drops the guard and edits the first transfer.
    async with db.primary.begin() as conn:
        await conn.execute(text(f"DROP TRIGGER {table}_no_update"))
        await conn.execute(text(f"UPDATE {table} SET amount = 999 WHERE chain_seq = 1"))
    report = (await client.get("/api/v1/ledger/verify")).json()
    assert report["ok"] is False
    assert report["broken_chains"][0]["promoter_id"] == str(parent)
    assert "altered" in report["broken_chains"][0]["reason"]
    assert {m["account"] for m in report["balance_mismatches"]} == {"frozen"}


async def test_auth_and_bad_input(client: httpx.AsyncClient) -> None:
    anonymous = await client.get("/api/v1/accounts/123", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert (await client.get("/api/v1/accounts/abc")).json()["error"]["code"] == "request.bad_id"
    malformed = await client.post(
        "/api/v1/commission/rules", json={"scope": "weekly", "levels": []}
    )
    assert malformed.status_code == 422


async def test_risk_hold_keeps_a_record_from_settling(
    client: httpx.AsyncClient, service: Commission
) -> None:
    await service.settings(frozen_days=0)
    await service.rule("default", [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}])
    parent, grandparent = fresh_id(), fresh_id()
    order = paid_order([parent, grandparent], [item(10_000)])
    await service.pay(order)
    await service.complete(order, datetime.now(UTC))
    first, second = (await client.get(f"/api/v1/orders/{order.order_id}/commissions")).json()[
        "items"
    ]
    held = await client.post(f"/api/v1/commissions/{first['id']}/hold")
    assert (held.status_code, held.json()["status"]) == (200, "held")
    assert (await client.post(f"/api/v1/commissions/{first['id']}/hold")).json()["status"] == "held"
    run = (await client.post("/api/v1/settlements/run")).json()
    assert (run["records_settled"], run["amount"]) == (1, 500)
    assert (await client.get(f"/api/v1/accounts/{parent}")).json()["frozen_amount"] == 1_000
    settled = await client.post(f"/api/v1/commissions/{second['id']}/hold")
    assert (settled.status_code, settled.json()["error"]["code"]) == (
        409,
        "commission.not_holdable",
    )
    released = await client.post(f"/api/v1/commissions/{first['id']}/release")
    assert released.json()["status"] == "frozen"
    run = (await client.post("/api/v1/settlements/run")).json()
    assert (run["records_settled"], run["amount"]) == (1, 1_000)
    account = (await client.get(f"/api/v1/accounts/{parent}")).json()
    assert (account["frozen_amount"], account["available_amount"]) == (0, 1_000)
    missing = await client.post("/api/v1/commissions/123456789/hold")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "commission.not_found")
    assert (await client.get("/api/v1/ledger/verify")).json()["ok"] is True
