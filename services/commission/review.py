"""Risk review: an admin puts a frozen record on hold (it will not settle) and releases it
(it settles with the next run once its order is due). Held money stays in the promoter's
frozen account, so holding moves nothing in the ledger."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from libs.common.db.engine import Tx
from libs.common.errors import Conflict, NotFound
from libs.common.messaging.outbox import utcnow
from services.commission.context import CommissionContext
from services.commission.models import commission_orders


async def _locate(tx: Tx, ctx: CommissionContext, record_id: int) -> tuple[Any, dict[str, Any]]:
    conn = await tx.main()
    likely = ctx.tables.records.for_id(record_id).name[-6:]
    months = await ctx.tables.records.existing_months(conn)
    for month in sorted(months, key=lambda m: m != likely):
        table = ctx.tables.records.for_month(month)
        row = (
            await conn.execute(select(table).where(table.c.id == record_id).with_for_update())
        ).first()
        if row is not None:
            return table, dict(row._mapping)
    raise NotFound(f"no commission record {record_id}", code="commission.not_found")


async def change_hold(
    tx: Tx, ctx: CommissionContext, record_id: int, hold: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Hold a frozen record or release a held one; returns (before, after). Holding a held
    record or releasing a frozen one is a no-op; any other status is a 409."""
    conn = await tx.main()
    table, before = await _locate(tx, ctx, record_id)
    wanted, source = ("held", "frozen") if hold else ("frozen", "held")
    if before["status"] == wanted:
        return before, before
    if before["status"] != source:
        raise Conflict(
            f"a {before['status']} record cannot be {'held' if hold else 'released'}",
            code="commission.not_holdable" if hold else "commission.not_held",
            details={"status": before["status"]},
        )
    now = utcnow()
    changed = await conn.execute(
        update(table)
        .where(table.c.id == record_id, table.c.status == source)
        .values(status=wanted, updated_at=now)
    )
    if changed.rowcount != 1:
        raise Conflict("the record changed meanwhile", code="commission.changed")
    if not hold:
        # Its order may have been settled around it: due again, so the next run settles it.
        await conn.execute(
            update(commission_orders)
            .where(commission_orders.c.order_id == before["order_id"])
            .values(settled_at=None, enqueued_at=None)
        )
    return before, {**before, "status": wanted, "updated_at": now}
