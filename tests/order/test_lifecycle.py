"""Lifecycle: each transition, each refusal (409 with its code), replays, auto-completion,
and the events held back while the attribution is pending."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from libs.common.errors import Conflict
from libs.common.messaging.outbox import utcnow
from libs.common.runtime import Runtime
from services.order.attribution import record_snapshot
from services.order.schemas import OrderIn, RefundIn
from services.order.service import OrderService
from services.order.user_client import Attribution
from tests.order.conftest import order_body, order_events

PROMOTER, GRANDPARENT = 1111111111, 2222222222
CHAIN = Attribution(
    promoter_id=PROMOTER,
    beneficiaries=[{"level": 1, "user_id": PROMOTER}, {"level": 2, "user_id": GRANDPARENT}],
)


async def _attributed_order(orders: OrderService, **overrides: object) -> int:
    """An order whose snapshot is taken (as the resolver does once the user service answers)."""
    order, _ = await orders.create_order(OrderIn.model_validate(order_body(**overrides)))
    assert await orders.db.run(lambda tx: record_snapshot(tx, order.id, CHAIN))
    return order.id


async def _types(orders: OrderService, order_id: int) -> list[str]:
    return [e["type"] for e in await order_events(orders, order_id)]


async def test_created_paid_completed(orders: OrderService) -> None:
    order_id = await _attributed_order(orders)
    paid = await orders.pay(order_id)
    assert paid.status == "paid" and paid.paid_at is not None
    completed = await orders.complete(order_id)
    assert completed.status == "completed" and completed.completed_at is not None
    events = await order_events(orders, order_id)
    assert [e["type"] for e in events] == ["order.created", "order.paid", "order.completed"]
    paid_data = events[1]["data"]
    assert paid_data["promoter_id"] == str(PROMOTER)
    assert paid_data["beneficiaries"] == [
        {"level": 1, "user_id": str(PROMOTER)},
        {"level": 2, "user_id": str(GRANDPARENT)},
    ]
    assert paid_data["attribution_status"] == "resolved"
    assert [i["paid_amount"] for i in paid_data["items"]] == [9000, 3001]
    assert events[2]["data"]["automatic"] is False
    assert all(e["key"] == str(order_id) for e in events)


async def test_replayed_moves_are_no_ops(orders: OrderService) -> None:
    order_id = await _attributed_order(orders)
    await orders.pay(order_id)
    assert (await orders.pay(order_id)).status == "paid"
    await orders.complete(order_id)
    assert (await orders.complete(order_id)).status == "completed"
    assert (await orders.pay(order_id)).status == "completed"
    assert await _types(orders, order_id) == ["order.created", "order.paid", "order.completed"]
    closed_id = await _attributed_order(orders, order_no="N-2")
    await orders.close(closed_id)
    assert (await orders.close(closed_id)).status == "closed"
    assert await _types(orders, closed_id) == ["order.created", "order.closed"]


@pytest.mark.parametrize(
    ("setup", "move", "code"),
    [
        ([], "complete", "order.not_paid"),
        (["close"], "pay", "order.closed"),
        (["close"], "complete", "order.closed"),
        (["pay"], "close", "order.already_paid"),
        (["pay", "complete"], "close", "order.already_paid"),
    ],
)
async def test_illegal_transitions_are_409s(
    orders: OrderService, setup: list[str], move: str, code: str
) -> None:
    order_id = await _attributed_order(orders)
    for step in setup:
        await getattr(orders, step)(order_id)
    before = await orders.get(order_id)
    with pytest.raises(Conflict) as refused:
        await getattr(orders, move)(order_id)
    assert refused.value.code == code
    assert refused.value.status == 409
    assert (await orders.get(order_id)).status == before.status


async def test_concurrent_pay_and_close_one_wins(orders: OrderService) -> None:
    order_id = await _attributed_order(orders)
    results = await asyncio.gather(
        orders.pay(order_id), orders.close(order_id), return_exceptions=True
    )
    winners = [r for r in results if not isinstance(r, Exception)]
    losers = [r for r in results if isinstance(r, Conflict)]
    assert len(winners) == 1 and len(losers) == 1
    final = (await orders.get(order_id)).status
    assert final in ("paid", "closed")
    assert len(await _types(orders, order_id)) == 2


async def test_paid_events_wait_for_a_pending_attribution(orders: OrderService) -> None:
    order, _ = await orders.create_order(OrderIn.model_validate(order_body()))
    assert order.attribution_status == "pending"
    await orders.pay(order.id)
    await orders.refund(order.id, RefundIn(refund_no="R1", amount=1000))
    await orders.complete(order.id)
    # Nothing after order.created: commission must see the beneficiaries first.
    assert await _types(orders, order.id) == ["order.created"]
    assert await orders.db.run(lambda tx: record_snapshot(tx, order.id, CHAIN))
    # Resolving twice never attributes twice.
    other = Attribution(promoter_id=42, beneficiaries=[{"level": 1, "user_id": 42}])
    assert not await orders.db.run(lambda tx: record_snapshot(tx, order.id, other))
    stored = await orders.get(order.id)
    assert stored.attribution_status == "resolved" and stored.promoter_id == PROMOTER
    events = await order_events(orders, order.id)
    assert [e["type"] for e in events] == [
        "order.created",
        "order.paid",
        "order.refunded",
        "order.completed",
    ]
    assert events[1]["data"]["beneficiaries"][0] == {"level": 1, "user_id": str(PROMOTER)}
    assert [i["refunded_amount"] for i in events[1]["data"]["items"]] == [0, 0]
    assert sum(i["refunded_amount"] for i in events[2]["data"]["items"]) == 1000


async def test_a_pending_attribution_that_resolves_to_nobody(orders: OrderService) -> None:
    order, _ = await orders.create_order(OrderIn.model_validate(order_body()))
    await orders.pay(order.id)
    assert await orders.db.run(lambda tx: record_snapshot(tx, order.id, Attribution(None, [])))
    stored = await orders.get(order.id)
    assert stored.attribution_status == "none" and stored.beneficiaries == []
    paid = (await order_events(orders, order.id))[1]
    assert paid["type"] == "order.paid"
    assert paid["data"]["beneficiaries"] == [] and paid["data"]["attribution_status"] == "none"


async def test_auto_completion_after_the_configured_days(
    orders: OrderService, runtime: Runtime
) -> None:
    old = await _attributed_order(orders)
    fresh = await _attributed_order(orders, order_no="N-2")
    unpaid = await _attributed_order(orders, order_no="N-3")
    await orders.pay(old)
    await orders.pay(fresh)
    # Default 15 days: nothing is due today; 16 days on, both paid orders are.
    assert await orders.complete_due() == 0
    later = utcnow() + timedelta(days=16)
    assert await orders.complete_due(later) == 2
    assert await orders.complete_due(later) == 0
    for order_id in (old, fresh):
        order = await orders.get(order_id)
        assert order.status == "completed" and order.auto_completed
        completed = (await order_events(orders, order_id))[-1]
        assert completed["type"] == "order.completed"
        assert completed["data"]["automatic"] is True
    assert (await orders.get(unpaid)).status == "created"
    # A change of the setting is in force: 0 days completes a paid order at once.
    await runtime.db.run(lambda tx: runtime.business.update(tx, {"auto_complete_days": 0}))
    another = await _attributed_order(orders, order_no="N-4")
    await orders.pay(another)
    await asyncio.sleep(0.6)  # the settings cache lives half a second
    assert await orders.complete_due() == 1
