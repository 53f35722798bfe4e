"""Shard routing: user-keyed tables ``<name>_{0..15}`` and time-keyed monthly tables.

A logical shard is ``id % 16`` (the id's gene, see libs.common.ids); the shard map of the
:class:`~libs.common.db.engine.Database` says which physical database holds it. Monthly
tables ``<name>_YYYYMM`` are created ahead by :meth:`MonthlyTables.ensure_ahead` from a
maintenance task, never on the hot path; reads across months ask the registry which exist.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import Column, MetaData, String, Table, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.sql import insert_ignore
from libs.common.ids import SHARD_COUNT, shard_of, timestamp_of

TableFactory = Callable[[str, MetaData], Table]


class ShardedTable:
    """Sixteen copies of one table, ``<base>_0`` .. ``<base>_15``."""

    def __init__(self, base: str, factory: TableFactory, metadata: MetaData | None = None) -> None:
        self.base = base
        self.metadata = metadata or MetaData()
        self.tables = [factory(f"{base}_{n}", self.metadata) for n in range(SHARD_COUNT)]

    def for_shard(self, shard: int) -> Table:
        return self.tables[shard]

    def for_id(self, entity_id: int) -> Table:
        """The table holding rows keyed by ``entity_id`` (a user id, or an id with its gene)."""
        return self.tables[shard_of(entity_id)]


def month_key(moment: datetime, zone: ZoneInfo) -> str:
    """``YYYYMM`` of ``moment`` in the business timezone."""
    return moment.astimezone(zone).strftime("%Y%m")


def add_months(month: str, count: int) -> str:
    year, mon = int(month[:4]), int(month[4:])
    index = year * 12 + (mon - 1) + count
    return f"{index // 12:04d}{index % 12 + 1:02d}"


monthly_registry_metadata = MetaData()
monthly_registry = Table(
    "monthly_tables",
    monthly_registry_metadata,
    Column("base", String(64), primary_key=True),
    Column("month", String(6), primary_key=True),
)


class MonthlyTables:
    """``<base>_YYYYMM`` tables, one per business month, created ahead of need."""

    def __init__(self, base: str, factory: TableFactory, zone: ZoneInfo) -> None:
        self.base = base
        self.factory = factory
        self.zone = zone
        self.metadata = MetaData()
        self._tables: dict[str, Table] = {}

    def for_month(self, month: str) -> Table:
        table = self._tables.get(month)
        if table is None:
            table = self.factory(f"{self.base}_{month}", self.metadata)
            self._tables[month] = table
        return table

    def for_time(self, moment: datetime) -> Table:
        return self.for_month(month_key(moment, self.zone))

    def for_id(self, entity_id: int) -> Table:
        """The month of a time-keyed row comes from its id's timestamp."""
        return self.for_time(timestamp_of(entity_id))

    async def ensure(self, conn: AsyncConnection, month: str) -> None:
        table = self.for_month(month)
        await conn.run_sync(lambda sync: table.create(sync, checkfirst=True))
        await insert_ignore(conn, monthly_registry, [{"base": self.base, "month": month}])

    async def ensure_ahead(
        self, conn: AsyncConnection, now: datetime, months_ahead: int = 2
    ) -> None:
        """Create this month's table and the next ``months_ahead`` (idempotent)."""
        current = month_key(now, self.zone)
        for offset in range(months_ahead + 1):
            await self.ensure(conn, add_months(current, offset))

    async def existing_months(self, conn: AsyncConnection) -> list[str]:
        """Months whose table exists, newest first."""
        rows = await conn.execute(
            select(monthly_registry.c.month)
            .where(monthly_registry.c.base == self.base)
            .order_by(monthly_registry.c.month.desc())
        )
        return [row[0] for row in rows]
