"""End to end through the gateway on the real processes: an order earns a promoter
commission, it settles, the promoter files payee details and withdraws, finance approves and
pays by bank transfer, and the ledger, balances and tax report agree."""

from __future__ import annotations

import csv
import io
import secrets
import time
from typing import Any

import httpx
import jwt

from deploy.local.stack import Stack
from tests.withdrawals.conftest import CARD, ID_NUMBER

YUAN = 100


def _promoter_client(stack: Stack, user_id: str) -> httpx.Client:
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": "tuike",
            "aud": "tuike-api",
            "sub": user_id,
            "roles": ["promoter"],
            "exp": now + 600,
            "nbf": now - 5,
        },
        stack.config.jwt_secret,
        algorithm="HS256",
    )
    return httpx.Client(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def _ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def _earn(api: httpx.Client, tag: str, commission_amount: int) -> tuple[str, str]:
    """A promoter who earned ``commission_amount`` (settled, available); returns its id."""
    promoter = _ok(api.post("/api/v1/users", json={"external_id": f"wd-p-{tag}"}), 201)["id"]
    applied = api.post("/api/v1/promoters", json={"user_id": promoter})
    assert applied.status_code in (200, 201), applied.text
    _ok(api.post(f"/api/v1/promoters/{promoter}/approve"))
    code = _ok(api.get(f"/api/v1/promoters/{promoter}"))["code"]
    buyer = _ok(api.post("/api/v1/users", json={"external_id": f"wd-b-{tag}"}), 201)["id"]
    sku = f"wd-sku-{tag}"
    _ok(
        api.post(
            "/api/v1/commission/rules",
            json={"scope": "product", "key": sku, "levels": [{"level": 1, "rate_bps": 2_000}]},
        ),
        201,
    )
    paid_amount = commission_amount * 5  # 20 %
    order = _ok(
        api.post(
            "/api/v1/orders",
            json={
                "platform": "default",
                "order_no": f"wd-{tag}",
                "buyer_user_id": buyer,
                "promoter_code": code,
                "currency": "CNY",
                "items": [
                    {
                        "sku": sku,
                        "category": "books",
                        "quantity": 1,
                        "unit_price_amount": paid_amount,
                        "paid_amount": paid_amount,
                    }
                ],
            },
        ),
        201,
    )
    _ok(api.post(f"/api/v1/orders/{order['id']}/pay"))
    _wait(lambda: _ok(api.get(f"/api/v1/accounts/{promoter}"))["frozen_amount"] > 0)
    before = _ok(api.get("/api/v1/settings/commission"))["frozen_days"]
    _ok(api.put("/api/v1/settings/commission", json={"frozen_days": 0}))
    try:
        _ok(api.post(f"/api/v1/orders/{order['id']}/complete"))

        def settled() -> bool:
            api.post("/api/v1/settlements/run")
            return _ok(api.get(f"/api/v1/accounts/{promoter}"))["available_amount"] > 0

        _wait(settled)
    finally:
        _ok(api.put("/api/v1/settings/commission", json={"frozen_days": before}))
    assert _ok(api.get(f"/api/v1/accounts/{promoter}"))["available_amount"] == commission_amount
    return promoter, code


def _wait(condition: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_earn_withdraw_audit_and_pay_through_the_gateway(stack: Stack, api: httpx.Client) -> None:
    tag = secrets.token_hex(4)
    promoter, _ = _earn(api, tag, 2_000 * YUAN)
    payee = {"real_name": "赵六", "id_number": ID_NUMBER, "bank_card": CARD}
    assert _ok(api.put(f"/api/v1/promoters/{promoter}/payee", json=payee))["bank_card"] == CARD

    with _promoter_client(stack, promoter) as me:
        shown = _ok(me.get(f"/api/v1/promoters/{promoter}/payee"))
        assert (shown["real_name"], shown["bank_card"]) == ("赵*", "尾号0128")
        body = {"promoter_id": promoter, "amount": 1_000 * YUAN, "channel": "bank"}
        first = _ok(me.post("/api/v1/withdrawals", json={**body, "idempotency_key": "one"}), 201)
        # (1,000 − 800) × 20% = 40 yuan withheld
        assert (first["tax_amount"], first["net_amount"], first["status"]) == (
            40 * YUAN,
            960 * YUAN,
            "pending",
        )
        replay = me.post("/api/v1/withdrawals", json={**body, "idempotency_key": "one"})
        assert (replay.status_code, replay.json()["id"]) == (200, first["id"])
        second = _ok(
            me.post(
                "/api/v1/withdrawals",
                json={**body, "amount": 500 * YUAN, "idempotency_key": "two"},
            ),
            201,
        )
        # the month is now 1,500 yuan: (1,500 − 800) × 20% = 140, minus the 40 withheld
        assert second["tax_amount"] == 100 * YUAN
        too_much = me.post(
            "/api/v1/withdrawals", json={**body, "amount": 600 * YUAN, "idempotency_key": "3"}
        )
        assert too_much.json()["error"]["code"] == "withdrawal.insufficient_balance"
        forbidden = me.post(f"/api/v1/withdrawals/{first['id']}/approve")
        assert (forbidden.status_code, forbidden.json()["error"]["code"]) == (403, "auth.forbidden")
        assert me.get("/api/v1/withdrawals", params={"status": "pending"}).status_code == 403
        mine = _ok(me.get("/api/v1/withdrawals", params={"promoter_id": promoter}))
        assert {w["id"] for w in mine["items"]} == {first["id"], second["id"]}
        assert _ok(me.post(f"/api/v1/withdrawals/{second['id']}/cancel"))["status"] == "cancelled"

    queue = _ok(
        api.get("/api/v1/withdrawals", params={"status": "pending", "promoter_id": promoter})
    )
    assert [w["id"] for w in queue["items"]] == [first["id"]]
    approved = _ok(api.post(f"/api/v1/withdrawals/{first['id']}/approve"))
    assert (approved["status"], approved["payout_provider"]) == ("approved", "manual")
    exported = api.get("/api/v1/withdrawals/transfer-file", params={"channel": "bank"})
    lines = list(csv.DictReader(io.StringIO(exported.content.decode("utf-8-sig"))))
    mine_lines = [line for line in lines if line["withdrawal_id"] == first["id"]]
    assert [(m["account"], m["amount"], m["payee_name"]) for m in mine_lines] == [
        (CARD, "960.00", "赵六")
    ]
    paid = _ok(
        api.post(
            f"/api/v1/withdrawals/{first['id']}/mark-paid", json={"voucher_reference": "ICBC-1"}
        )
    )
    assert paid["status"] == "paid"
    account = _ok(api.get(f"/api/v1/accounts/{promoter}"))
    assert (
        account["available_amount"],
        account["withdrawing_amount"],
        account["paid_out_amount"],
    ) == (1_000 * YUAN, 0, 960 * YUAN)
    assert _ok(api.get("/api/v1/ledger/verify"))["ok"] is True
    report = api.get(f"/api/v1/tax/reports/{paid['tax_month']}").content.decode("utf-8-sig")
    assert f"{promoter},赵六,{ID_NUMBER},{paid['tax_month']},1,100000,20000,4000" in report
