"""The ``platform.orders`` handler: what it applies, and what it refuses as poison."""

from __future__ import annotations

from typing import Any

import pytest

from libs.common.messaging.consumer import PoisonMessage
from libs.common.messaging.envelope import make_event
from services.order.consumers import apply_platform_event
from services.order.service import OrderService
from tests.order.conftest import order_body, order_events


async def _apply(orders: OrderService, event_type: str, data: dict[str, Any]) -> None:
    event = make_event(event_type, "x", key="x", data=data, source="platform")
    await orders.db.run(lambda tx: apply_platform_event(orders, tx, event))


async def test_placed_then_paid_then_refunded(orders: OrderService) -> None:
    await _apply(orders, "order.placed", order_body())
    await _apply(orders, "order.placed", order_body())  # redelivered: the same order
    order_id = await orders.id_by_number("shop", "N-1")
    order = await orders.get(order_id)
    assert order.attribution_status == "pending"  # the resolver takes the snapshot
    await _apply(orders, "order.paid", {"platform": "shop", "order_no": "N-1"})
    await _apply(
        orders,
        "order.refunded",
        {"platform": "shop", "order_no": "N-1", "refund_no": "R1", "amount": 100},
    )
    order = await orders.get(order_id)
    assert order.status == "paid" and order.refunded_amount == 100
    assert [e["type"] for e in await order_events(orders, order_id)] == ["order.created"]


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("order.placed", {"order_no": "N-1"}),
        ("order.placed", order_body(currency="ABC")),
        ("order.shipped", order_body()),
    ],
)
async def test_bad_messages_are_poison(
    orders: OrderService, event_type: str, data: dict[str, object]
) -> None:
    with pytest.raises(PoisonMessage):
        await _apply(orders, event_type, data)
    assert await order_events(orders) == []


async def test_conflicting_replay_and_illegal_move_are_poison(orders: OrderService) -> None:
    await _apply(orders, "order.placed", order_body())
    with pytest.raises(PoisonMessage, match=r"order\.duplicate_conflict"):
        await _apply(orders, "order.placed", order_body(shipping_amount=0))
    with pytest.raises(PoisonMessage, match=r"order\.already_paid"):
        await _apply(orders, "order.paid", {"platform": "shop", "order_no": "N-1"})
        await _apply(orders, "order.closed", {"platform": "shop", "order_no": "N-1"})


async def test_early_moves_are_retried_not_poison(orders: OrderService) -> None:
    with pytest.raises(LookupError):
        await _apply(orders, "order.paid", {"platform": "shop", "order_no": "LATER"})
    await _apply(orders, "order.placed", order_body())
    number = {"platform": "shop", "order_no": "N-1"}
    with pytest.raises(RuntimeError, match=r"order\.not_paid"):
        await _apply(orders, "order.refunded", {**number, "refund_no": "R1", "amount": 1})
    with pytest.raises(RuntimeError, match=r"order\.not_paid"):
        await _apply(orders, "order.completed", number)
