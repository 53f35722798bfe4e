"""Schema versions of the commission service's database(s), and the monthly tables created
ahead of need (with the ledger's append-only triggers)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.common_tables import (
    COMMON_MIGRATION,
    outbox_part_use_migration,
    outbox_parts_migration,
)
from libs.common.db.engine import Database
from libs.common.db.migrations import Migration, MigrationContext
from libs.common.db.sharding import add_months, month_key, monthly_registry
from services.commission.models import (
    CommissionTables,
    accounts,
    metadata,
    settle_batch_metadata,
)
from services.commission.withdrawals.migrations import MIGRATIONS as WITHDRAWAL_MIGRATIONS


async def _create_commission_tables(ctx: MigrationContext) -> None:
    await ctx.create_tables(metadata)
    await ctx.create_sharded(accounts)


# Columns added to commission_record_YYYYMM by migration 3 (settlement batches).
_SETTLE_BATCH_COLUMNS = (("settle_batch_id", "BIGINT NULL"), ("settled_amount", "BIGINT NULL"))


async def add_settle_batch_columns(conn: AsyncConnection, table: str) -> None:
    """Give a record table made before settlement batches their columns (idempotent)."""

    def existing(sync: Connection) -> set[str]:
        return {column["name"] for column in inspect(sync).get_columns(table)}

    present = await conn.run_sync(existing)
    for column, ddl in _SETTLE_BATCH_COLUMNS:
        if column not in present:
            await conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))


async def _settlement_batches(ctx: MigrationContext) -> None:
    await ctx.create_tables(settle_batch_metadata)
    async with ctx.db.primary.begin() as conn:
        months = [
            row[0]
            for row in await conn.execute(
                select(monthly_registry.c.month).where(
                    monthly_registry.c.base == "commission_record"
                )
            )
        ]
        for month in months:
            await add_settle_batch_columns(conn, f"commission_record_{month}")


MIGRATIONS: list[Migration] = [
    COMMON_MIGRATION,
    Migration(
        2,
        "commission: rules, promoter status, orders, refunds, accounts",
        _create_commission_tables,
    ),
    Migration(3, "commission: settlement batches", _settlement_batches),
    outbox_parts_migration(4),
    *WITHDRAWAL_MIGRATIONS,
    # Versions increase through the list: after the withdrawal steps (50-59).
    outbox_part_use_migration(60),
    # The new table of `metadata` (create_all skips the ones that exist).
    Migration(70, "commission: refunds waiting for their order.paid", _create_commission_tables),
]


async def _trigger_exists(conn: AsyncConnection, name: str) -> bool:
    if conn.dialect.name == "sqlite":
        found = await conn.scalar(
            text("SELECT count(*) FROM sqlite_master WHERE type='trigger' AND name=:n"), {"n": name}
        )
    else:
        found = await conn.scalar(
            text(
                "SELECT count(*) FROM information_schema.triggers "
                "WHERE trigger_schema = DATABASE() AND trigger_name = :n"
            ),
            {"n": name},
        )
    return bool(found)


async def make_append_only(conn: AsyncConnection, table: str) -> None:
    """Triggers that refuse UPDATE and DELETE on a ledger table, on SQLite and MySQL/MariaDB."""
    for operation in ("UPDATE", "DELETE"):
        name = f"{table}_no_{operation.lower()}"
        if await _trigger_exists(conn, name):
            continue
        message = f"{table} is append-only: {operation} refused"
        if conn.dialect.name == "sqlite":
            statement = (
                f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE {operation} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )
        else:
            statement = (
                f"CREATE TRIGGER {name} BEFORE {operation} ON {table} FOR EACH ROW "
                f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{message}'"
            )
        try:
            await conn.execute(text(statement))
        except DBAPIError as exc:
            # Two processes starting together (the API and its worker) both found no trigger
            # and both made it: the one that lost has nothing left to do.
            if _error_number(exc) != _MYSQL_TRIGGER_EXISTS:
                raise


_MYSQL_TRIGGER_EXISTS = 1359


def _error_number(exc: DBAPIError) -> int | None:
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


async def ensure_monthly_tables(
    db: Database, tables: CommissionTables, now: datetime, months_ahead: int = 2
) -> None:
    """This month's and the next months' record and ledger tables (idempotent); run at start
    and daily, never on the hot path."""
    current = month_key(now, tables.zone)
    for offset in range(months_ahead + 1):
        month = add_months(current, offset)
        async with db.primary.begin() as conn:
            await tables.records.ensure(conn, month)
            # A process still on the old code may have made this month's table.
            await add_settle_batch_columns(conn, tables.records.for_month(month).name)
            await tables.flows.ensure(conn, month)
            await make_append_only(conn, tables.flows.for_month(month).name)
