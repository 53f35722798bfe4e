"""Tables every service has in its main database, created by its first migration."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, MetaData, String, Table, update

from libs.common.audit import audit_metadata
from libs.common.business_settings import business_settings_metadata
from libs.common.db.global_index import global_index_metadata
from libs.common.db.migrations import Migration, MigrationContext, add_missing_columns
from libs.common.messaging.consumer import inbox_metadata
from libs.common.messaging.outbox import AutoId, outbox, outbox_metadata, outbox_part, utcnow

diagnostics_metadata = MetaData()
probe_receipts = Table(
    "diagnostic_probe_receipts",
    diagnostics_metadata,
    # Deliberately not unique on the probe: only the inbox may stop a duplicate, so a count
    # above one shows a duplicate got through.
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("probe_id", String(64), nullable=False, index=True),
    Column("event_id", String(191), nullable=False),
    Column("received_at", DateTime, nullable=False),
)


async def _create_common_tables(ctx: MigrationContext) -> None:
    for metadata in (
        outbox_metadata,
        inbox_metadata,
        global_index_metadata,
        business_settings_metadata,
        diagnostics_metadata,
        audit_metadata,
    ):
        await ctx.create_tables(metadata)


COMMON_MIGRATION = Migration(
    1,
    "common tables: outbox, inbox, dead letters, global index, settings, probes",
    _create_common_tables,
)


async def _outbox_parts(ctx: MigrationContext) -> None:
    """The outbox's ``parts`` column and the ``outbox_part`` table (decision 0805), each
    skipped if present: a database created after this step already has them."""
    await ctx.create_tables(outbox_metadata)
    async with ctx.db.primary.begin() as conn:
        await add_missing_columns(conn, outbox, ["parts"])


def outbox_parts_migration(version: int) -> Migration:
    """The step that gives an outbox its parts, at ``version`` in a service's list."""
    return Migration(version, "outbox: big repeated values stored once", _outbox_parts)


async def _outbox_part_use(ctx: MigrationContext) -> None:
    """``outbox_part.used_at`` (decision 0806). Parts already there count as used now: a
    process may still name them from memory, so none is pruned before it could be unused."""
    async with ctx.db.primary.begin() as conn:
        await add_missing_columns(conn, outbox_part, ["used_at"])
        await conn.execute(
            update(outbox_part).where(outbox_part.c.used_at.is_(None)).values(used_at=utcnow())
        )


def outbox_part_use_migration(version: int) -> Migration:
    """The step that lets an outbox prune its parts, at ``version`` in a service's list."""
    return Migration(version, "outbox: when each part was last used", _outbox_part_use)
