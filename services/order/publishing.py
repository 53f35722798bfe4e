"""Events of an order on ``order.events`` (key: the order id), written through the outbox in
the transaction of the change.

While an order's attribution is ``pending``, the events that follow its payment (paid,
refunded, completed) are held back: commission must see the beneficiaries first. When the
attribution resolves, :func:`publish_held_back` writes them in their natural order from the
stored state. Event ids are deterministic, so writing one twice never makes a second fact.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from libs.common.db.engine import Tx
from libs.common.events import OrderClosed, OrderCompleted, OrderRefunded, RefundedItem
from libs.common.ids import shard_of
from libs.common.messaging.envelope import ORDER_EVENTS, make_event
from libs.common.messaging.outbox import publish
from services.order.models import COMPLETED, PAID, PENDING
from services.order.records import Order, load_refunds, utc

SOURCE = "order"


async def _publish(tx: Tx, event_type: str, order_id: int, fact: str | int, data: Any) -> None:
    await publish(
        tx,
        ORDER_EVENTS,
        make_event(
            event_type, fact, key=order_id, data=data.model_dump(mode="json"), source=SOURCE
        ),
    )


async def order_created(tx: Tx, order: Order) -> None:
    await _publish(tx, "order.created", order.id, order.id, order.to_event())


async def order_paid(tx: Tx, order: Order) -> None:
    if order.attribution_status == PENDING:
        return
    await _publish(tx, "order.paid", order.id, order.id, order.to_event(as_paid=True))


def refund_event(order: Order, refund: dict[str, Any]) -> OrderRefunded:
    return OrderRefunded(
        order_id=order.id,
        refund_id=refund["id"],
        refund_no=refund["refund_no"],
        currency=order.currency,
        items=[RefundedItem(**item) for item in refund["items"]],
        refunded_at=utc(refund["created_at"]),
    )


async def order_refunded(tx: Tx, order: Order, refund: dict[str, Any]) -> None:
    if order.attribution_status == PENDING:
        return
    await _publish(tx, "order.refunded", order.id, refund["id"], refund_event(order, refund))


async def order_completed(tx: Tx, order: Order, *, automatic: bool) -> None:
    if order.attribution_status == PENDING:
        return
    data = OrderCompleted(
        order_id=order.id,
        completed_at=utc(order.completed_at),
        automatic=automatic,
    )
    await _publish(tx, "order.completed", order.id, order.id, data)


async def order_closed(tx: Tx, order: Order, closed_at: datetime) -> None:
    data = OrderClosed(order_id=order.id, closed_at=utc(closed_at))
    await _publish(tx, "order.closed", order.id, order.id, data)


async def publish_held_back(tx: Tx, order: Order) -> None:
    """After the attribution resolved: the paid, refunded and completed events that waited."""
    if order.status not in (PAID, COMPLETED):
        return
    await order_paid(tx, order)
    for refund in await load_refunds(await tx.shard(shard_of(order.id)), order.id):
        await order_refunded(tx, order, refund)
    if order.status == COMPLETED:
        await order_completed(tx, order, automatic=order.auto_completed)
