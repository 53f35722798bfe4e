"""End to end: real envelopes on the stack's broker, read back through the gateway."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer

from deploy.local.stack import Stack
from libs.common.auth import make_token
from libs.common.messaging.envelope import (
    COMMISSION_EVENTS,
    ORDER_EVENTS,
    USER_EVENTS,
    Envelope,
)
from libs.common.settings import CommonSettings
from tests.stats.conftest import SHANGHAI, bound, commissions, new_id, paid, refunded

TOPICS = {"user": USER_EVENTS, "order": ORDER_EVENTS, "commission": COMMISSION_EVENTS}


def _publish(stack: Stack, events: list[Envelope]) -> None:
    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=stack.kafka, enable_idempotence=False)
        await producer.start()
        try:
            for event in events:
                await producer.send_and_wait(
                    TOPICS[event.source], value=event.to_bytes(), key=event.key.encode()
                )
        finally:
            await producer.stop()

    asyncio.run(send())


def _wait_for(read: Callable[[], Any], expected: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = read()
        if got == expected:
            return
        assert time.monotonic() < deadline, f"still {got!r}, expected {expected!r}"
        time.sleep(0.3)


def test_events_on_the_broker_show_up_in_stats_through_the_gateway(
    stack: Stack, api: httpx.Client
) -> None:
    now = datetime.now(SHANGHAI)
    today = now.date().isoformat()
    promoter, earner, buyer, order, other_order = (new_id() for _ in range(5))
    events = [
        bound(buyer, [promoter], now),
        paid(order, buyer, [promoter], [12000, 3000], now, shipping_amount=500),
        refunded(order, new_id(), [2000], now),
        # Another promoter's commission on an order of its own customer.
        commissions("accrued", other_order, [(1, earner, 900)], now),
        commissions("reversed", other_order, [(1, earner, 100)], now),
    ]
    _publish(stack, events)

    def day_of(promoter_id: int) -> dict[str, Any]:
        response = api.get(
            f"/api/v1/stats/promoters/{promoter_id}", params={"from": today, "to": today}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["promoter_id"] == str(promoter_id)
        (item,) = body["items"]
        return {k: item[k] for k in ("order_count", "order_amount", "new_customers")} | {
            "commission": item["commission_amount"]
        }

    _wait_for(
        lambda: {k: v for k, v in day_of(promoter).items() if k != "commission"},
        {"order_count": 1, "order_amount": 13000, "new_customers": 1},
    )
    _wait_for(lambda: day_of(earner)["commission"], 800)

    summary = api.get(f"/api/v1/stats/promoters/{earner}/summary")
    assert summary.status_code == 200, summary.text
    body = summary.json()
    assert body["today"]["commission_amount"] == 800
    assert body["all_time"]["commission_amount"] == 800
    for balance in ("frozen_amount", "available_amount"):
        assert body[balance] is None or isinstance(body[balance], int)

    board = api.get(
        "/api/v1/stats/leaderboard",
        params={"metric": "commission", "period": "month", "promoter_id": str(earner)},
    )
    assert board.status_code == 200, board.text
    me = board.json()["me"]
    assert me["promoter_id"] == str(earner) and me["value"] == 800 and me["rank"] >= 1

    def team_level1() -> dict[str, int]:
        response = api.get(f"/api/v1/stats/promoters/{promoter}/team")
        assert response.status_code == 200, response.text
        level1 = response.json()["totals"]["level1"]
        return {k: level1[k] for k in ("order_count", "order_amount", "new_customers")}

    _wait_for(team_level1, {"order_count": 1, "order_amount": 13000, "new_customers": 1})

    # Every event again, then a marker: once the marker is in, the duplicates were seen.
    marker_promoter = new_id()
    _publish(stack, [*events, bound(new_id(), [marker_promoter], now)])
    _wait_for(lambda: day_of(marker_promoter)["new_customers"], 1)
    assert day_of(promoter) | {"commission": 0} == {
        "order_count": 1,
        "order_amount": 13000,
        "new_customers": 1,
        "commission": 0,
    }
    assert day_of(earner)["commission"] == 800


def test_bad_requests_get_a_clear_4xx(stack: Stack, api: httpx.Client) -> None:
    cases = [
        ("/api/v1/stats/promoters/abc", {}, 400, "request.bad_id"),
        (
            "/api/v1/stats/promoters/12345",
            {"from": "2026-03-02", "to": "2026-03-01"},
            400,
            "stats.bad_range",
        ),
        ("/api/v1/stats/promoters/12345", {"from": "yesterday"}, 400, "request.bad_parameter"),
        ("/api/v1/stats/leaderboard", {"metric": "likes"}, 400, "stats.bad_metric"),
        ("/api/v1/stats/leaderboard", {"period": "year"}, 400, "stats.bad_period"),
        ("/api/v1/stats/leaderboard", {"limit": "1000"}, 400, "stats.bad_limit"),
    ]
    for path, params, status, code in cases:
        response = api.get(path, params=params)
        assert response.status_code == status, (path, params, response.text)
        assert response.json()["error"]["code"] == code
    anonymous = httpx.get(f"{stack.gateway_url}/api/v1/stats/leaderboard", timeout=10)
    assert anonymous.status_code == 401


def test_a_promoter_reads_its_own_stats_only(stack: Stack) -> None:
    me, someone_else = new_id(), new_id()
    settings = CommonSettings(
        jwt_secret=stack.config.jwt_secret, internal_api_key=stack.config.internal_key
    )
    token = make_token(settings, me, ["promoter"])
    with httpx.Client(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as promoter:
        own = promoter.get(f"/api/v1/stats/promoters/{me}")
        assert own.status_code == 200, own.text
        assert len(own.json()["items"]) == 30  # the last 30 days by default, zeros filled
        assert promoter.get(f"/api/v1/stats/promoters/{me}/summary").status_code == 200
        board = promoter.get("/api/v1/stats/leaderboard", params={"metric": "new_customers"})
        assert board.status_code == 200, board.text
        assert board.json()["me"] == {"rank": None, "promoter_id": str(me), "value": 0}
        for path in ("", "/summary", "/team"):
            other = promoter.get(f"/api/v1/stats/promoters/{someone_else}{path}")
            assert other.status_code == 403, other.text
            assert other.json()["error"]["code"] == "auth.forbidden"
