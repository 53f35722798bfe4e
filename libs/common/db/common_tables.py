"""Tables every service has in its main database, created by its first migration."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, MetaData, String, Table

from libs.common.audit import audit_metadata
from libs.common.business_settings import business_settings_metadata
from libs.common.db.global_index import global_index_metadata
from libs.common.db.migrations import Migration, MigrationContext
from libs.common.messaging.consumer import inbox_metadata
from libs.common.messaging.outbox import AutoId, outbox_metadata

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
