"""Versioned migrations for one service's own database(s).

Each service lists ``Migration`` steps in order; applied versions are recorded in
``schema_migrations`` on the main database. A step gets a :class:`MigrationContext` that can
create plain tables (main database), the 16 copies of a sharded table on the physical
database that holds each shard, and run raw DDL per dialect (triggers). Alembic's
autogenerate does not fit tables that exist 16 times across a shard map, hence this small
runner (docs/decisions/0002-migrations.md).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.engine import Database
from libs.common.db.sharding import ShardedTable, monthly_registry

log = logging.getLogger("tuike.migrations")

_meta = MetaData()
schema_migrations = Table(
    "schema_migrations",
    _meta,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("applied_at", DateTime, nullable=False),
)


class MigrationContext:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_tables(self, metadata: MetaData) -> None:
        async with self.db.primary.begin() as conn:
            await conn.run_sync(lambda sync: metadata.create_all(sync, checkfirst=True))

    async def create_sharded(self, sharded: ShardedTable) -> None:
        for url, shards in self.db.shards_by_url().items():
            tables = [sharded.for_shard(n) for n in shards]
            async with self.db.engine_for_url(url).begin() as conn:

                def create(sync: Connection, tables: list[Table] = tables) -> None:
                    sharded.metadata.create_all(sync, tables=tables, checkfirst=True)

                await conn.run_sync(create)

    async def execute(self, sqlite: Sequence[str] = (), mysql: Sequence[str] = ()) -> None:
        """Raw DDL per dialect, on the main database."""
        statements = sqlite if self.db.is_sqlite else mysql
        async with self.db.primary.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))


async def add_missing_columns(conn: AsyncConnection, table: Table, names: Sequence[str]) -> None:
    """Add each of ``names`` (columns of the model ``table``, nullable) that the database's
    table lacks: how a step gives tables made by an earlier version their new columns, and
    does nothing where a later version already made them."""

    def present(sync: Connection) -> set[str]:
        return {column["name"] for column in inspect(sync).get_columns(table.name)}

    existing = await conn.run_sync(present)
    quote = conn.dialect.identifier_preparer.quote
    for name in names:
        if name not in existing:
            kind = table.c[name].type.compile(dialect=conn.dialect)
            await conn.execute(
                text(f"ALTER TABLE {quote(table.name)} ADD COLUMN {quote(name)} {kind}")
            )


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[MigrationContext], Awaitable[None]]


async def _applied(conn: AsyncConnection) -> set[int]:
    rows = await conn.execute(select(schema_migrations.c.version))
    return {row[0] for row in rows}


async def migrate(db: Database, migrations: Sequence[Migration]) -> list[int]:
    """Apply the steps not yet applied, in order; returns the versions applied now.

    Steps are written to be idempotent (``CREATE … IF NOT EXISTS`` semantics), so two
    processes migrating at once, or a crash between a step and its record, is harmless.
    """
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise ValueError("migration versions must be unique and increasing")
    async with db.primary.begin() as conn:
        await conn.run_sync(lambda sync: _meta.create_all(sync, checkfirst=True))
        await conn.run_sync(
            lambda sync: monthly_registry.metadata.create_all(sync, checkfirst=True)
        )
        done = await _applied(conn)
    context = MigrationContext(db)
    applied: list[int] = []
    for migration in migrations:
        if migration.version in done:
            continue
        log.info("applying migration %s %s", migration.version, migration.name)
        await migration.apply(context)
        async with db.primary.begin() as conn:
            if migration.version not in await _applied(conn):
                await conn.execute(
                    schema_migrations.insert().values(
                        version=migration.version,
                        name=migration.name,
                        applied_at=datetime.now(UTC).replace(tzinfo=None),
                    )
                )
        applied.append(migration.version)
    return applied
