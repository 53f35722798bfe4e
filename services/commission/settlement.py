"""Completion and settlement: ``order.completed`` sets ``unfreeze_at`` = completed_at +
frozen_days; when due (``unfreeze_at ≤ now``) an order's frozen records move to settled and
their amounts from the promoter's frozen account to the available one."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update

from libs.common.db.engine import Tx
from libs.common.db.sql import insert_ignore
from libs.common.events import CommissionLine, CommissionsChanged, OrderCompleted
from libs.common.messaging.envelope import COMMISSION_EVENTS, make_event
from libs.common.messaging.outbox import publish, utcnow
from services.commission.context import CommissionContext, aware, naive_utc
from services.commission.ledger import StaleWrite, Transfer, post_transfers, promoter_account
from services.commission.models import commission_orders
from services.commission.settings import load_settings

# Bounded IN lists: every dialect takes this many parameters comfortably.
CHUNK = 500


def chunks(values: Sequence[int], size: int = CHUNK) -> list[Sequence[int]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


async def complete_orders(
    tx: Tx, ctx: CommissionContext, completions: Sequence[OrderCompleted]
) -> int:
    """Start the frozen period of completed orders (the ``frozen_days`` in force now apply;
    a later change does not move them). A repeated completion changes nothing."""
    if not completions:
        return 0
    frozen_days = (await load_settings(tx)).frozen_days
    conn = await tx.main()
    changed = 0
    for completion in completions:
        completed_at = naive_utc(completion.completed_at)
        assert completed_at is not None
        unfreeze_at = completed_at + timedelta(days=frozen_days)
        result = await conn.execute(
            update(commission_orders)
            .where(
                commission_orders.c.order_id == completion.order_id,
                commission_orders.c.completed_at.is_(None),
            )
            .values(completed_at=completed_at, unfreeze_at=unfreeze_at)
        )
        if not result.rowcount:
            # Not accrued yet (its order.paid waits for attribution): the claim row waits
            # for it. Already completed: the insert is ignored.
            changed += await insert_ignore(
                conn,
                commission_orders,
                [
                    {
                        "order_id": completion.order_id,
                        "currency": "CNY",
                        "completed_at": completed_at,
                        "unfreeze_at": unfreeze_at,
                    }
                ],
            )
            continue
        changed += 1
        month = await conn.scalar(
            select(commission_orders.c.record_month).where(
                commission_orders.c.order_id == completion.order_id
            )
        )
        if month:
            records = ctx.tables.records.for_month(month)
            await conn.execute(
                update(records)
                .where(records.c.order_id == completion.order_id)
                .values(unfreeze_at=unfreeze_at)
            )
    return changed


async def due_orders(
    tx: Tx, now: datetime, limit: int, requeue_before: datetime | None = None
) -> list[int]:
    """Orders whose frozen period is over and not yet settled (oldest due first); with
    ``requeue_before``, only those not handed to the queue since then."""
    conn = await tx.main()
    query = select(commission_orders.c.order_id).where(
        commission_orders.c.settled_at.is_(None),
        commission_orders.c.unfreeze_at <= now,
        commission_orders.c.accrued_at.is_not(None),
    )
    if requeue_before is not None:
        query = query.where(
            or_(
                commission_orders.c.enqueued_at.is_(None),
                commission_orders.c.enqueued_at < requeue_before,
            )
        )
    rows = await conn.execute(query.order_by(commission_orders.c.unfreeze_at).limit(limit))
    return [int(r[0]) for r in rows]


async def mark_enqueued(tx: Tx, order_ids: Sequence[int], now: datetime) -> None:
    conn = await tx.main()
    for part in chunks(order_ids):
        await conn.execute(
            update(commission_orders)
            .where(commission_orders.c.order_id.in_(part))
            .values(enqueued_at=now)
        )


@dataclass
class SettleResult:
    orders: int = 0
    records: int = 0
    amount: int = 0

    def add(self, other: SettleResult) -> None:
        self.orders += other.orders
        self.records += other.records
        self.amount += other.amount


async def settle_orders(
    tx: Tx, ctx: CommissionContext, order_ids: Sequence[int], now: datetime | None = None
) -> SettleResult:
    """Settle the given orders if they are due: frozen records → settled (guarded, so a
    concurrent refund and this settlement cannot both win), transfers frozen → available.
    Orders not due, already settled or unknown are skipped, so a redelivery is harmless."""
    now = now or utcnow()
    result = SettleResult()
    conn = await tx.main()
    due: dict[int, str | None] = {}
    for part in chunks(list(dict.fromkeys(order_ids))):
        rows = await conn.execute(
            select(commission_orders.c.order_id, commission_orders.c.record_month)
            .where(
                commission_orders.c.order_id.in_(part),
                commission_orders.c.settled_at.is_(None),
                commission_orders.c.unfreeze_at <= now,
                commission_orders.c.accrued_at.is_not(None),
            )
            .with_for_update()
        )
        due.update({int(r[0]): r[1] for r in rows})
    if not due:
        return result
    by_month: dict[str, list[int]] = defaultdict(list)
    for order_id, month in due.items():
        if month:
            by_month[month].append(order_id)
    transfers: list[Transfer] = []
    transaction_ids: list[int] = []
    lines: dict[int, list[CommissionLine]] = defaultdict(list)
    transaction_of: dict[int, int] = {}
    for month, month_orders in by_month.items():
        table = ctx.tables.records.for_month(month)
        for part in chunks(month_orders):
            records = (
                await conn.execute(
                    select(
                        table.c.id,
                        table.c.order_id,
                        table.c.item_id,
                        table.c.level,
                        table.c.beneficiary_id,
                        table.c.amount,
                        table.c.currency,
                    )
                    .where(table.c.order_id.in_(part), table.c.status == "frozen")
                    .with_for_update()
                )
            ).all()
            record_ids = [int(r[0]) for r in records]
            for ids_part in chunks(record_ids):
                updated = await conn.execute(
                    update(table)
                    .where(table.c.id.in_(ids_part), table.c.status == "frozen")
                    .values(status="settled", settled_at=now, updated_at=now)
                )
                if updated.rowcount != len(ids_part):
                    raise StaleWrite("a record changed while it was being settled")
            for record_id, order_id, item_id, level, beneficiary_id, amount, currency in records:
                result.records += 1
                if amount <= 0:
                    continue
                result.amount += amount
                transaction_id = transaction_of.setdefault(order_id, ctx.ids.next_id(0))
                transfers.append(
                    Transfer(
                        kind="settle",
                        key=f"settle:{record_id}",
                        debit=promoter_account(beneficiary_id, "frozen"),
                        credit=promoter_account(beneficiary_id, "available"),
                        amount=amount,
                        currency=currency,
                        order_id=order_id,
                        record_id=record_id,
                    )
                )
                transaction_ids.append(transaction_id)
                lines[order_id].append(
                    CommissionLine(
                        record_id=record_id,
                        order_id=order_id,
                        item_id=item_id,
                        level=level,
                        beneficiary_id=beneficiary_id,
                        amount=amount,
                        currency=currency,
                    )
                )
    for part in chunks(list(due)):
        await conn.execute(
            update(commission_orders)
            .where(commission_orders.c.order_id.in_(part), commission_orders.c.settled_at.is_(None))
            .values(settled_at=now)
        )
    result.orders = len(due)
    await post_transfers(tx, ctx.ids, ctx.tables, transfers, now, transaction_ids)
    events = [
        make_event(
            "commission.settled",
            order_id,
            key=order_id,
            data=CommissionsChanged(
                order_id=order_id, lines=order_lines, occurred_at=aware(now)
            ).model_dump(mode="json"),
            source="commission",
        )
        for order_id, order_lines in lines.items()
    ]
    if events:
        await publish(tx, COMMISSION_EVENTS, *events)
    return result


async def settle_due_now(
    tx: Tx, ctx: CommissionContext, now: datetime | None = None, limit: int = 500
) -> SettleResult:
    """One bounded batch of what is due now (the synchronous path and the admin run)."""
    now = now or utcnow()
    return await settle_orders(tx, ctx, await due_orders(tx, now, limit), now)
