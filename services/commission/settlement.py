"""Completion and settlement: ``order.completed`` sets ``unfreeze_at`` = completed_at +
frozen_days; when due (``unfreeze_at ≤ now``) an order's frozen records move to settled and
their amounts from the promoter's frozen account to the available one, a batch of orders at
a time with one ledger transfer per promoter per batch (docs/decisions/0304)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Column, Table, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.engine import Tx
from libs.common.db.sql import insert_ignore
from libs.common.events import CommissionsChanged, OrderCompleted
from libs.common.messaging.envelope import COMMISSION_EVENTS, make_event
from libs.common.messaging.outbox import publish, utcnow
from services.commission.context import CommissionContext, aware, naive_utc
from services.commission.ledger import StaleWrite, Transfer, post_transfers, promoter_account
from services.commission.models import commission_orders, settle_batches
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
    # The batches that moved something (one per transaction of the batched way).
    batch_ids: list[int] = field(default_factory=list)

    def add(self, other: SettleResult) -> None:
        self.orders += other.orders
        self.records += other.records
        self.amount += other.amount
        self.batch_ids.extend(other.batch_ids)


async def _lock_due(
    conn: AsyncConnection, order_ids: Sequence[int], now: datetime
) -> dict[int, str]:
    """The given orders that are due and not settled, locked (MySQL), with their record month
    (an order without one has no records and is simply marked settled)."""
    due: dict[int, str] = {}
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
        due.update({int(r[0]): r[1] or "" for r in rows})
    return due


async def _mark_settled(conn: AsyncConnection, order_ids: Sequence[int], now: datetime) -> None:
    for part in chunks(order_ids):
        await conn.execute(
            update(commission_orders)
            .where(commission_orders.c.order_id.in_(part), commission_orders.c.settled_at.is_(None))
            .values(settled_at=now)
        )


def _settled_columns(table: Table) -> list[Column[Any]]:
    """What settling needs of a record: which order line, whose, how much."""
    return [
        table.c.id,
        table.c.order_id,
        table.c.item_id,
        table.c.level,
        table.c.beneficiary_id,
        table.c.amount,
        table.c.currency,
    ]


def _by_month(due: dict[int, str]) -> dict[str, list[int]]:
    months: dict[str, list[int]] = defaultdict(list)
    for order_id, month in due.items():
        if month:
            months[month].append(order_id)
    return months


def batch_key(batch_id: int, promoter_id: int, currency: str, several: bool) -> str:
    """``settle-batch:{batch}:{promoter}``; ``:{currency}`` is added only when one promoter
    has records in several currencies in one batch (a balance row holds one currency, so
    accrual never makes that today)."""
    key = f"settle-batch:{batch_id}:{promoter_id}"
    return f"{key}:{currency}" if several else key


async def settle_orders(
    tx: Tx, ctx: CommissionContext, order_ids: Sequence[int], now: datetime | None = None
) -> SettleResult:
    """Settle the given orders if they are due, as one batch (docs/decisions/0304).

    One guarded multi-row UPDATE per month table moves their ``frozen`` records to
    ``settled`` and stamps them with this transaction's batch id and the amount moved; only
    the rows stamped with it are read back, so a record a concurrent refund or settlement
    took first is simply not in the batch. Then one transfer frozen → available per promoter
    carries the sum of that promoter's records (key ``settle-batch:{batch}:{promoter}``).
    Orders not due, already settled or unknown are skipped, so a redelivery is harmless."""
    now = now or utcnow()
    result = SettleResult()
    conn = await tx.main()
    due = await _lock_due(conn, order_ids, now)
    if not due:
        return result
    # A fresh id per attempt: a retried transaction (or one whose commit was in doubt) can
    # only ever read back rows it moved itself.
    batch_id = ctx.ids.next_id(0)
    moved: list[Any] = []
    for month, month_orders in _by_month(due).items():
        table = ctx.tables.records.for_month(month)
        for part in chunks(month_orders):
            await conn.execute(
                update(table)
                .where(table.c.order_id.in_(part), table.c.status == "frozen")
                .values(
                    status="settled",
                    settled_at=now,
                    updated_at=now,
                    settle_batch_id=batch_id,
                    settled_amount=table.c.amount,
                )
            )
            moved.extend(
                await conn.execute(
                    select(*_settled_columns(table)).where(
                        table.c.order_id.in_(part), table.c.settle_batch_id == batch_id
                    )
                )
            )
    await _mark_settled(conn, list(due), now)
    result.orders = len(due)
    result.records = len(moved)
    if not moved:
        return result

    sums: dict[tuple[int, str], int] = defaultdict(int)
    lines: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record_id, order_id, item_id, level, beneficiary_id, amount, currency in moved:
        if amount <= 0:
            continue
        sums[(beneficiary_id, currency)] += amount
        lines[order_id].append(
            {
                "record_id": record_id,
                "order_id": order_id,
                "item_id": item_id,
                "level": level,
                "beneficiary_id": beneficiary_id,
                "amount": amount,
                "currency": currency,
            }
        )
    currencies: dict[int, int] = defaultdict(int)
    for promoter_id, _ in sums:
        currencies[promoter_id] += 1
    transfers = [
        Transfer(
            kind="settle",
            key=batch_key(batch_id, promoter_id, currency, currencies[promoter_id] > 1),
            debit=promoter_account(promoter_id, "frozen"),
            credit=promoter_account(promoter_id, "available"),
            amount=amount,
            currency=currency,
        )
        for (promoter_id, currency), amount in sorted(sums.items())
    ]
    result.amount = sum(sums.values())
    result.batch_ids.append(batch_id)
    await conn.execute(
        settle_batches.insert().values(
            id=batch_id,
            settled_at=now,
            order_count=len(due),
            record_count=len(moved),
            promoter_count=len(currencies),
            amount=result.amount,
        )
    )
    # The batch id is the ledger transaction id: every transfer of the batch shares it.
    await post_transfers(tx, ctx.ids, ctx.tables, transfers, now, [batch_id] * len(transfers))
    await _publish_settled(tx, lines, now, batch_id)
    return result


def settled_event_data(
    order_id: int, lines: Sequence[dict[str, Any]], occurred_at: str
) -> dict[str, Any]:
    """``CommissionsChanged.model_dump(mode="json")`` of one order's settled lines, built
    directly: validating thousands of lines we just read from typed columns cost more than
    the ledger itself (tests/commission/test_settlement_batches.py checks it stays equal to
    the pydantic form). ``occurred_at`` is already in the model's JSON form."""
    return {
        "order_id": str(order_id),
        "lines": [
            {
                "record_id": str(line["record_id"]),
                "order_id": str(order_id),
                "item_id": str(line["item_id"]),
                "level": int(line["level"]),
                "beneficiary_id": str(line["beneficiary_id"]),
                "amount": int(line["amount"]),
                "currency": str(line["currency"]),
            }
            for line in lines
        ],
        "occurred_at": occurred_at,
    }


def json_moment(moment: datetime) -> str:
    """A datetime as the event models write it (pydantic's JSON form)."""
    stamp: str = CommissionsChanged(order_id=1, lines=[], occurred_at=aware(moment)).model_dump(
        mode="json"
    )["occurred_at"]
    return stamp


async def _publish_settled(
    tx: Tx, lines: dict[int, list[dict[str, Any]]], now: datetime, batch_id: int | None
) -> None:
    """``commission.settled`` per order, as before batches (the stats service reads them).
    Its fact is the settlement of these lines in this batch: a record released from hold
    settles in a later batch and makes a second, distinct event of the same order."""
    occurred_at = json_moment(now)
    events = [
        make_event(
            "commission.settled",
            order_id if batch_id is None else f"{order_id}:{batch_id}",
            key=order_id,
            data=settled_event_data(order_id, order_lines, occurred_at),
            source="commission",
            occurred_at=aware(now),
        )
        for order_id, order_lines in lines.items()
    ]
    if events:
        await publish(tx, COMMISSION_EVENTS, *events)


async def settle_orders_per_record(
    tx: Tx, ctx: CommissionContext, order_ids: Sequence[int], now: datetime | None = None
) -> SettleResult:
    """The way before batches, kept as the benchmark's baseline: the records are read and
    updated, then one transfer per record (key ``settle:{record}``). Records it settles
    have no batch; ``verify`` accepts both kinds."""
    now = now or utcnow()
    result = SettleResult()
    conn = await tx.main()
    due = await _lock_due(conn, order_ids, now)
    if not due:
        return result
    transfers: list[Transfer] = []
    transaction_ids: list[int] = []
    lines: dict[int, list[dict[str, Any]]] = defaultdict(list)
    transaction_of: dict[int, int] = {}
    for month, month_orders in _by_month(due).items():
        table = ctx.tables.records.for_month(month)
        for part in chunks(month_orders):
            records = (
                await conn.execute(
                    select(*_settled_columns(table))
                    .where(table.c.order_id.in_(part), table.c.status == "frozen")
                    .with_for_update()
                )
            ).all()
            record_ids = [int(r[0]) for r in records]
            for ids_part in chunks(record_ids):
                updated = await conn.execute(
                    update(table)
                    .where(table.c.id.in_(ids_part), table.c.status == "frozen")
                    .values(
                        status="settled",
                        settled_at=now,
                        updated_at=now,
                        settled_amount=table.c.amount,
                    )
                )
                if updated.rowcount != len(ids_part):
                    raise StaleWrite("a record changed while it was being settled")
            for record_id, order_id, item_id, level, beneficiary_id, amount, currency in records:
                result.records += 1
                if amount <= 0:
                    continue
                result.amount += amount
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
                transaction_ids.append(transaction_of.setdefault(order_id, ctx.ids.next_id(0)))
                lines[order_id].append(
                    {
                        "record_id": record_id,
                        "order_id": order_id,
                        "item_id": item_id,
                        "level": level,
                        "beneficiary_id": beneficiary_id,
                        "amount": amount,
                        "currency": currency,
                    }
                )
    await _mark_settled(conn, list(due), now)
    result.orders = len(due)
    await post_transfers(tx, ctx.ids, ctx.tables, transfers, now, transaction_ids)
    await _publish_settled(tx, lines, now, None)
    return result


async def settle_due_now(
    tx: Tx, ctx: CommissionContext, now: datetime | None = None, limit: int = 500
) -> SettleResult:
    """One bounded batch of what is due now (the synchronous path and the admin run)."""
    now = now or utcnow()
    return await settle_orders(tx, ctx, await due_orders(tx, now, limit), now)


async def settle_due_now_per_record(
    tx: Tx, ctx: CommissionContext, now: datetime | None = None, limit: int = 500
) -> SettleResult:
    """:func:`settle_due_now` the way before batches (the benchmark's baseline)."""
    now = now or utcnow()
    return await settle_orders_per_record(tx, ctx, await due_orders(tx, now, limit), now)
