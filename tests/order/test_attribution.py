"""The retrying resolver against a user service that does not answer (a closed port, not a
mock): the order stays pending, is retried with back-off, and nothing is published."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from libs.common.ids import shard_of
from libs.common.messaging.outbox import utcnow
from services.order.attribution import resolve_pending, retry_delay
from services.order.models import orders as orders_table
from services.order.schemas import OrderIn
from services.order.service import OrderService
from tests.order.conftest import order_body, order_events


async def _retry_state(orders: OrderService, order_id: int) -> tuple[str, int, object]:
    table = orders_table.for_id(order_id)
    async with orders.db.read_shard(shard_of(order_id), may_lag=False) as conn:
        row = (
            await conn.execute(
                select(
                    table.c.attribution_status,
                    table.c.attribution_attempts,
                    table.c.attribution_next_at,
                ).where(table.c.id == order_id)
            )
        ).one()
    return row[0], row[1], row[2]


async def test_unreachable_user_service_keeps_the_order_pending_with_back_off(
    orders: OrderService,
) -> None:
    order, _ = await orders.create_order(OrderIn.model_validate(order_body()))
    await orders.pay(order.id)
    assert await _retry_state(orders, order.id) == ("pending", 1, await _next_at(orders, order.id))
    assert await resolve_pending(orders.db, orders.users, 3) == 0
    status, attempts, next_at = await _retry_state(orders, order.id)
    assert status == "pending" and attempts == 2
    assert isinstance(next_at, type(utcnow())) and next_at > utcnow() - timedelta(seconds=1)
    # Not due yet: a pass right away leaves it alone.
    assert await resolve_pending(orders.db, orders.users, 3) == 0
    assert (await _retry_state(orders, order.id))[1] == 2
    # Due later: asked again, still down, backs off further.
    assert await resolve_pending(orders.db, orders.users, 3, now=utcnow() + timedelta(hours=1)) == 0
    assert (await _retry_state(orders, order.id))[1] == 3
    assert [e["type"] for e in await order_events(orders, order.id)] == ["order.created"]


async def _next_at(orders: OrderService, order_id: int) -> object:
    return (await _retry_state(orders, order_id))[2]


def test_back_off_doubles_up_to_the_cap() -> None:
    assert [retry_delay(n, 60).total_seconds() for n in (1, 2, 3, 4, 7, 8, 20)] == [
        1,
        2,
        4,
        8,
        60,
        60,
        60,
    ]
