"""Refunds (``order.refunded``): each line of a refunded item is recomputed on the amount the
item still has paid, and the difference is reversed: from the frozen account while frozen,
from the available one after settlement (a clawback, which may take the available balance
below zero). A line never grows back, and a full refund leaves exactly zero."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.engine import Tx
from libs.common.db.sql import insert_ignore
from libs.common.events import CommissionLine, CommissionsChanged, OrderRefunded
from libs.common.messaging.envelope import COMMISSION_EVENTS, make_event
from libs.common.messaging.outbox import publish, utcnow
from services.commission.calculation import item_lines
from services.commission.compliance import LevelTerms, profile_of
from services.commission.context import CommissionContext, aware
from services.commission.ledger import (
    PLATFORM_EXPENSE,
    StaleWrite,
    Transfer,
    post_transfers,
    promoter_account,
)
from services.commission.models import (
    commission_orders,
    commission_refunds,
    commission_refunds_waiting,
)
from services.commission.settings import load_settings

# Money a record holds sits in this promoter account while the record has this status.
_SOURCE_BUCKET = {"frozen": "frozen", "held": "frozen", "settled": "available"}


# How long a refund waits for its order's order.paid. The wait is for an order.paid that a
# broker restart put behind its refund, which the relay republishes at once; a refund of an
# order that earned nothing (most orders) waits for nothing, and goes after this.
REFUND_WAIT = timedelta(days=8)
_PRUNE_BATCH = 100


async def apply_refunds(
    tx: Tx, ctx: CommissionContext, refunds: Sequence[OrderRefunded], now: datetime | None = None
) -> list[CommissionLine]:
    """Reverse what refunds took away; each refund once (a repeat changes nothing).
    Returns the reversed lines. A refund of an order whose order.paid has not been applied
    waits for it (``apply_waiting_refunds``)."""
    now = now or utcnow()
    conn = await tx.main()
    claimed = []
    for refund in refunds:
        if await insert_ignore(
            conn,
            commission_refunds,
            [{"refund_id": refund.refund_id, "order_id": refund.order_id, "processed_at": now}],
        ):
            claimed.append(refund)
    return await _reverse(tx, ctx, claimed, now)


async def apply_waiting_refunds(
    tx: Tx, ctx: CommissionContext, order_ids: Sequence[int], now: datetime
) -> list[CommissionLine]:
    """Apply the refunds that arrived before these orders' order.paid, now that the accrual
    has written their records (in its transaction), oldest first; returns the reversed
    lines. The outcome equals the refunds applied after the accrual."""
    conn = await tx.main()
    table = commission_refunds_waiting
    waiting = (
        await conn.execute(
            select(table.c.refund_id, table.c.payload)
            .where(table.c.order_id.in_(list(order_ids)))
            .order_by(table.c.received_at, table.c.refund_id)
            .with_for_update()
        )
    ).all()
    if not waiting:
        return []
    await conn.execute(delete(table).where(table.c.refund_id.in_([int(row[0]) for row in waiting])))
    refunds = [OrderRefunded.model_validate_json(row[1]) for row in waiting]
    return await _reverse(tx, ctx, refunds, now)


async def _wait_for_payment(conn: AsyncConnection, refund: OrderRefunded, now: datetime) -> None:
    """Keep a refund until its order.paid is applied; forget those kept past ``REFUND_WAIT``
    (a few at a time: refunds of orders that earned nothing all come here)."""
    await insert_ignore(
        conn,
        commission_refunds_waiting,
        [
            {
                "refund_id": refund.refund_id,
                "order_id": refund.order_id,
                "payload": refund.model_dump_json(),
                "received_at": now,
            }
        ],
    )
    expired = [
        int(row[0])
        for row in await conn.execute(
            select(commission_refunds_waiting.c.refund_id)
            .where(commission_refunds_waiting.c.received_at < now - REFUND_WAIT)
            .order_by(commission_refunds_waiting.c.received_at)
            .limit(_PRUNE_BATCH)
        )
    ]
    if expired:
        await conn.execute(
            delete(commission_refunds_waiting).where(
                commission_refunds_waiting.c.refund_id.in_(expired)
            )
        )


async def _reverse(
    tx: Tx, ctx: CommissionContext, refunds: Sequence[OrderRefunded], now: datetime
) -> list[CommissionLine]:
    conn = await tx.main()
    profile = profile_of(await load_settings(tx))
    transfers: list[Transfer] = []
    transaction_ids: list[int] = []
    reversed_lines: list[CommissionLine] = []
    events = []
    for refund in refunds:
        month = await conn.scalar(
            select(commission_orders.c.record_month)
            .where(commission_orders.c.order_id == refund.order_id)
            .with_for_update()
        )
        if not month:
            # No commissions for this order: it paid nothing to promoters, or its order.paid
            # has not been applied yet. The order service publishes a refund after the
            # order's order.paid, on the same partition, but a broker that restarted empty
            # can be sent the refund again (a producer's retry, a duplicate) before the relay
            # republishes the order.paid. An order.paid applied after its refund would accrue
            # on the full paid amount (the event carries no refunds): so the refund waits.
            await _wait_for_payment(conn, refund, now)
            continue
        remaining = {item.item_id: item.remaining_paid_amount for item in refund.items}
        table = ctx.tables.records.for_month(month)
        records = (
            await conn.execute(
                select(table)
                .where(table.c.order_id == refund.order_id, table.c.item_id.in_(list(remaining)))
                .with_for_update()
            )
        ).all()
        by_item: dict[int, list[dict[str, object]]] = defaultdict(list)
        for row in records:
            by_item[int(row._mapping["item_id"])].append(dict(row._mapping))
        transaction_id = ctx.ids.next_id(0)
        changes: list[dict[str, object]] = []
        lines: list[CommissionLine] = []
        for item_id, item_records in by_item.items():
            item_records.sort(key=lambda r: int(r["level"]))  # type: ignore[call-overload]
            first = item_records[0]
            new_base = min(int(first["base_amount"]), max(0, remaining[item_id]))  # type: ignore[call-overload]
            recomputed = item_lines(
                [
                    LevelTerms(
                        level=int(r["level"]),  # type: ignore[call-overload]
                        rate_bps=r["rate_bps"],  # type: ignore[arg-type]
                        cap_amount=r["cap_amount"],  # type: ignore[arg-type]
                        fixed_amount=r["fixed_amount"],  # type: ignore[arg-type]
                    )
                    for r in item_records
                ],
                new_base,
                int(first["quantity"]),  # type: ignore[call-overload]
                int(first["item_paid_amount"]),  # type: ignore[call-overload]
                profile.total_cap_bps,
            )
            for record, line in zip(item_records, recomputed, strict=True):
                status = str(record["status"])
                old_amount = int(record["amount"])  # type: ignore[call-overload]
                if status == "void" or status == "reversed":
                    continue
                new_amount = min(old_amount, line.amount)
                delta = old_amount - new_amount
                new_status = "reversed" if new_base == 0 else status
                if delta == 0 and new_status == status and new_base == record["base_amount"]:
                    continue
                changes.append(
                    {
                        "b_id": record["id"],
                        "b_old_status": status,
                        "b_old_amount": old_amount,
                        "b_amount": new_amount,
                        "b_base": new_base,
                        "b_delta": delta,
                        "b_status": new_status,
                        "b_now": now,
                    }
                )
                if delta > 0:
                    beneficiary = int(record["beneficiary_id"])  # type: ignore[call-overload]
                    transfers.append(
                        Transfer(
                            kind="reverse",
                            key=f"reverse:{refund.refund_id}:{record['id']}",
                            debit=promoter_account(beneficiary, _SOURCE_BUCKET[status]),
                            credit=PLATFORM_EXPENSE,
                            amount=delta,
                            currency=str(record["currency"]),
                            order_id=refund.order_id,
                            record_id=int(record["id"]),  # type: ignore[call-overload]
                        )
                    )
                    transaction_ids.append(transaction_id)
                    lines.append(
                        CommissionLine(
                            record_id=int(record["id"]),  # type: ignore[call-overload]
                            order_id=refund.order_id,
                            item_id=item_id,
                            level=int(record["level"]),  # type: ignore[call-overload]
                            beneficiary_id=beneficiary,
                            amount=delta,
                            currency=str(record["currency"]),
                        )
                    )
        if changes:
            statement = (
                update(table)
                .where(
                    and_(
                        table.c.id == bindparam("b_id"),
                        table.c.status == bindparam("b_old_status"),
                        table.c.amount == bindparam("b_old_amount"),
                    )
                )
                .values(
                    amount=bindparam("b_amount"),
                    base_amount=bindparam("b_base"),
                    reversed_amount=table.c.reversed_amount + bindparam("b_delta"),
                    status=bindparam("b_status"),
                    updated_at=bindparam("b_now"),
                )
            )
            result = await conn.execute(statement, changes)
            if (
                result.rowcount is not None
                and result.rowcount >= 0
                and result.rowcount != len(changes)
            ):
                raise StaleWrite("a record changed while the refund was applied")
        if lines:
            reversed_lines.extend(lines)
            events.append(
                make_event(
                    "commission.reversed",
                    refund.refund_id,
                    key=refund.order_id,
                    data=CommissionsChanged(
                        order_id=refund.order_id, lines=lines, occurred_at=aware(now)
                    ).model_dump(mode="json"),
                    source="commission",
                )
            )
    await post_transfers(tx, ctx.ids, ctx.tables, transfers, now, transaction_ids)
    if events:
        await publish(tx, COMMISSION_EVENTS, *events)
    return reversed_lines
