"""Refunds (``order.refunded``): each line of a refunded item is recomputed on the amount the
item still has paid, and the difference is reversed: from the frozen account while frozen,
from the available one after settlement (a clawback, which may take the available balance
below zero). A line never grows back, and a full refund leaves exactly zero."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, bindparam, select, update

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
from services.commission.models import commission_orders, commission_refunds
from services.commission.settings import load_settings

# Money a record holds sits in this promoter account while the record has this status.
_SOURCE_BUCKET = {"frozen": "frozen", "held": "frozen", "settled": "available"}


async def apply_refunds(
    tx: Tx, ctx: CommissionContext, refunds: Sequence[OrderRefunded], now: datetime | None = None
) -> list[CommissionLine]:
    """Reverse what refunds took away; each refund once (a repeat changes nothing).
    Returns the reversed lines."""
    now = now or utcnow()
    conn = await tx.main()
    profile = profile_of(await load_settings(tx))
    transfers: list[Transfer] = []
    transaction_ids: list[int] = []
    reversed_lines: list[CommissionLine] = []
    events = []
    for refund in refunds:
        claimed = await insert_ignore(
            conn,
            commission_refunds,
            [{"refund_id": refund.refund_id, "order_id": refund.order_id, "processed_at": now}],
        )
        if not claimed:
            continue
        month = await conn.scalar(
            select(commission_orders.c.record_month)
            .where(commission_orders.c.order_id == refund.order_id)
            .with_for_update()
        )
        if not month:
            # No commissions for this order: it paid nothing to promoters, or its order.paid
            # has not been applied. The second relies on per-key order: the order service
            # publishes a refund after the order's order.paid, on the same partition, and the
            # relay republishes what a restarted broker lost before anything new
            # (docs/reliability.md). An order.paid arriving after its refund would accrue on
            # the full paid amount (the event carries no refunds).
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
