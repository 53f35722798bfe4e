"""Through the whole stack (gateway, user, order, commission and stats services as processes,
the real broker): a paid order of a bound buyer earns its chain's commissions, a partial
refund reverses to the fen, completion and the settlement run make it available, the ledger
verifies, and the reconciliation finds orders and stats in agreement."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from deploy.local.stack import Stack
from libs.common.db.engine import Database
from services.commission.models import tables_for
from services.commission.reconciliation import reconcile

pytestmark = pytest.mark.e2e


def _wait(check: Callable[[], Any], seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def _promoter(api: httpx.Client, parent_code: str | None) -> tuple[str, str]:
    user = api.post("/api/v1/users", json={"external_id": f"c-{secrets.token_hex(6)}"})
    assert user.status_code == 201, user.text
    user_id = str(user.json()["id"])
    if parent_code:
        _bind(api, user_id, parent_code)
    assert api.post("/api/v1/promoters", json={"user_id": user_id}).status_code in (200, 201)
    approved = api.post(f"/api/v1/promoters/{user_id}/approve")
    assert approved.status_code == 200, approved.text
    return user_id, str(approved.json()["code"])


def _bind(api: httpx.Client, user_id: str, code: str) -> None:
    bound = api.post(
        "/api/v1/relations/bind", json={"user_id": user_id, "promoter_code": code, "source": "link"}
    )
    assert bound.status_code == 200, bound.text


def test_paid_order_to_settled_balance_through_the_stack(stack: Stack, api: httpx.Client) -> None:
    category = f"e2e-{secrets.token_hex(4)}"  # a rule of our own: other tests keep theirs
    rule = api.post(
        "/api/v1/commission/rules",
        json={
            "scope": "category",
            "key": category,
            "levels": [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}],
        },
    )
    assert rule.status_code == 201, rule.text
    grandparent, grandparent_code = _promoter(api, None)
    parent, parent_code = _promoter(api, grandparent_code)
    buyer = api.post("/api/v1/users", json={"external_id": f"b-{secrets.token_hex(6)}"})
    buyer_id = str(buyer.json()["id"])
    _bind(api, buyer_id, parent_code)
    created = api.post(
        "/api/v1/orders",
        json={
            "platform": "e2e",
            "order_no": f"C-{secrets.token_hex(6)}",
            "buyer_user_id": buyer_id,
            "currency": "CNY",
            "items": [
                {
                    "sku": "S1",
                    "category": category,
                    "quantity": 1,
                    "unit_price_amount": 12_345,
                    "paid_amount": 12_345,
                }
            ],
            "shipping_amount": 800,
        },
    )
    assert created.status_code == 201, created.text
    order_id = created.json()["id"]
    assert api.post(f"/api/v1/orders/{order_id}/pay").status_code == 200

    def lines() -> list[dict[str, Any]]:
        response = api.get(f"/api/v1/orders/{order_id}/commissions")
        assert response.status_code == 200, response.text
        return list(response.json()["items"])

    accrued = _wait(lambda: len(lines()) == 2 and lines())
    assert [
        (x["level"], x["beneficiary_id"], x["base_amount"], x["amount"], x["status"])
        for x in accrued
    ] == [
        (1, parent, 12_345, 1_234, "frozen"),
        (2, grandparent, 12_345, 617, "frozen"),
    ]
    assert accrued[0]["rule_id"] == rule.json()["id"]
    refunded = api.post(
        f"/api/v1/orders/{order_id}/refunds", json={"refund_no": "R1", "amount": 2_345}
    )
    assert refunded.status_code == 201, refunded.text
    _wait(lambda: [x["amount"] for x in lines()] == [1_000, 500])

    before = api.get("/api/v1/settings/commission").json()["frozen_days"]
    assert api.put("/api/v1/settings/commission", json={"frozen_days": 0}).status_code == 200
    try:
        time.sleep(1.1)  # settings are in force in every process within a second
        assert api.post(f"/api/v1/orders/{order_id}/complete").status_code == 200
        _wait(lambda: all(x["unfreeze_at"] for x in lines()))
    finally:
        api.put("/api/v1/settings/commission", json={"frozen_days": before})

    def settled() -> bool:
        api.post("/api/v1/settlements/run")
        return [x["status"] for x in lines()] == ["settled", "settled"]

    _wait(settled)
    account = api.get(f"/api/v1/accounts/{parent}").json()
    assert (account["frozen_amount"], account["available_amount"]) == (0, 1_000)
    assert api.get(f"/api/v1/accounts/{grandparent}").json()["available_amount"] == 500
    report = api.get("/api/v1/ledger/verify").json()
    assert report["ok"] is True, report

    # The stats service has seen accrued − reversed for the day: reconcile agrees.
    day = datetime.now(UTC).astimezone(tables_for("Asia/Shanghai").zone).date().isoformat()

    def stats_caught_up() -> bool:
        items = api.get(f"/api/v1/stats/promoters/{parent}?from={day}&to={day}").json()["items"]
        return bool(items) and items[0]["commission_amount"] == 1_000

    _wait(stats_caught_up)
    found = asyncio.run(_reconcile(stack))
    mine = [
        f
        for f in found.findings
        if f.get("order_id") == order_id or f.get("promoter_id") in (parent, grandparent)
    ]
    assert mine == []
    assert found.orders_checked >= 1


async def _reconcile(stack: Stack) -> Any:
    db = Database(stack.config.database_url("commission"))
    headers = {"Authorization": f"Bearer {stack.config.internal_key}"}
    until = datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=1)
    try:
        async with (
            httpx.AsyncClient(base_url=stack.service_url("order"), headers=headers) as orders,
            httpx.AsyncClient(base_url=stack.service_url("stats"), headers=headers) as stats,
        ):
            return await reconcile(
                db, tables_for("Asia/Shanghai"), orders, stats, until - timedelta(hours=1), until
            )
    finally:
        await db.dispose()
