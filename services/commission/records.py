"""Reads of commission records: one order's, and a promoter's (paged, newest first, across
the monthly tables)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from libs.common.db.engine import Database
from libs.common.errors import BadRequest
from services.commission.models import RECORD_STATUSES, CommissionTables, commission_orders


async def order_commissions(
    db: Database, tables: CommissionTables, order_id: int
) -> list[dict[str, Any]]:
    """Every record of an order (empty when it earned nothing), by item and level."""
    async with db.read(may_lag=True) as conn:
        month = await conn.scalar(
            select(commission_orders.c.record_month).where(commission_orders.c.order_id == order_id)
        )
        if not month:
            return []
        table = tables.records.for_month(month)
        rows = await conn.execute(
            select(table)
            .where(table.c.order_id == order_id)
            .order_by(table.c.item_id, table.c.level)
        )
        return [dict(row._mapping) for row in rows]


async def promoter_commissions(
    db: Database,
    tables: CommissionTables,
    beneficiary_id: int,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """A promoter's records, newest first; ``cursor`` is the last id of the previous page."""
    if status is not None and status not in RECORD_STATUSES:
        raise BadRequest(
            f"unknown status {status!r}",
            code="commission.bad_status",
            details={"allowed": list(RECORD_STATUSES)},
        )
    before: int | None = None
    if cursor:
        if not cursor.isdigit():
            raise BadRequest("malformed cursor", code="request.bad_cursor")
        before = int(cursor)
    found: list[dict[str, Any]] = []
    async with db.read(may_lag=True) as conn:
        for month in await tables.records.existing_months(conn):
            table = tables.records.for_month(month)
            query = select(table).where(table.c.beneficiary_id == beneficiary_id)
            if status is not None:
                query = query.where(table.c.status == status)
            if before is not None:
                query = query.where(table.c.id < before)
            rows = await conn.execute(
                query.order_by(table.c.id.desc()).limit(limit + 1 - len(found))
            )
            found.extend(dict(row._mapping) for row in rows)
            if len(found) > limit:
                break
    page = found[:limit]
    next_cursor = str(page[-1]["id"]) if len(found) > limit else None
    return page, next_cursor


async def commission_by_id(
    db: Database, tables: CommissionTables, record_id: int
) -> dict[str, Any]:
    """One record; its month comes from its id."""
    from libs.common.errors import NotFound

    table = tables.records.for_id(record_id)
    async with db.read(may_lag=True) as conn:
        if table.name[-6:] in await tables.records.existing_months(conn):
            row = (await conn.execute(select(table).where(table.c.id == record_id))).first()
            if row is not None:
                return dict(row._mapping)
    raise NotFound(f"no commission record {record_id}", code="commission.not_found")
