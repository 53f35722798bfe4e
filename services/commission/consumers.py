"""Event handlers of the commission service: decode, call the same service functions as the API."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from libs.common.db.engine import Tx
from libs.common.diagnostics import probe_subscription
from libs.common.events import (
    OrderCompleted,
    OrderData,
    OrderRefunded,
    PromoterApproved,
    PromoterStatusChanged,
)
from libs.common.messaging.consumer import PoisonMessage, Subscription
from libs.common.messaging.envelope import (
    COMMISSION_SETTLE,
    ORDER_EVENTS,
    USER_EVENTS,
    Envelope,
)
from libs.common.messaging.outbox import utcnow
from libs.common.runtime import Runtime
from services.commission.accrual import accrue_paid_orders
from services.commission.context import CommissionContext
from services.commission.models import tables_for
from services.commission.promoters import StatusChange, apply_status_changes
from services.commission.refunds import apply_refunds
from services.commission.service import count_settled
from services.commission.settlement import complete_orders, settle_orders

ORDER_TYPES = frozenset({"order.paid", "order.refunded", "order.completed", "order.closed"})
PROMOTER_TYPES = frozenset({"promoter.approved", "promoter.disabled", "promoter.enabled"})


M = TypeVar("M", bound=BaseModel)


def decode(model: type[M], event: Envelope) -> M:
    try:
        return model.model_validate(event.data)
    except ValidationError as exc:
        raise PoisonMessage(f"{event.type} {event.id}: {exc}") from None


def order_handler(context: Callable[[], CommissionContext]) -> Any:
    async def handle(tx: Tx, events: Sequence[Envelope]) -> None:
        """Consecutive events of one type go through together (a micro-batch of paid orders
        is one accrual); the order of events, and so of each order's facts, is kept."""
        ctx = context()
        for event_type, group in itertools.groupby(events, key=lambda e: e.type):
            batch = list(group)
            if event_type == "order.paid":
                await accrue_paid_orders(tx, ctx, [decode(OrderData, e) for e in batch])
            elif event_type == "order.refunded":
                await apply_refunds(tx, ctx, [decode(OrderRefunded, e) for e in batch])
            elif event_type == "order.completed":
                await complete_orders(tx, ctx, [decode(OrderCompleted, e) for e in batch])
            # order.closed: only unpaid orders close, and they earned nothing.

    return handle


async def handle_promoter_events(tx: Tx, events: Sequence[Envelope]) -> None:
    changes = []
    for event in events:
        if event.type == "promoter.approved":
            approved = decode(PromoterApproved, event)
            changes.append(
                StatusChange(approved.user_id, "approved", approved.tier, approved.approved_at)
            )
        else:
            changed = decode(PromoterStatusChanged, event)
            status = "disabled" if event.type == "promoter.disabled" else "approved"
            changes.append(StatusChange(changed.user_id, status, changed.tier, changed.changed_at))
    await apply_status_changes(tx, changes)


def settle_handler(context: Callable[[], CommissionContext]) -> Any:
    async def handle(tx: Tx, events: Sequence[Envelope]) -> None:
        order_ids = []
        for event in events:
            try:
                order_ids.append(int(event.data["order_id"]))
            except (KeyError, TypeError, ValueError):
                raise PoisonMessage(f"settle message without an order id: {event.id}") from None
        result = await settle_orders(tx, context(), order_ids, utcnow())

        async def counted() -> None:
            count_settled(result, "scheduled")

        tx.after_commit(counted)

    return handle


def subscriptions(runtime: Runtime) -> Sequence[Subscription]:
    def context() -> CommissionContext:
        return CommissionContext(runtime.id_generator, tables_for(runtime.settings.timezone))

    return [
        probe_subscription(),
        Subscription("orders", [ORDER_EVENTS], order_handler(context), ORDER_TYPES),
        Subscription("promoters", [USER_EVENTS], handle_promoter_events, PROMOTER_TYPES),
        Subscription(
            "settle",
            [COMMISSION_SETTLE],
            settle_handler(context),
            frozenset({"commission.settle_due"}),
        ),
    ]
