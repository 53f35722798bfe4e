"""Schema versions of the stats service's database(s)."""

from __future__ import annotations

from libs.common.db.common_tables import (
    COMMON_MIGRATION,
    outbox_part_use_migration,
    outbox_parts_migration,
)
from libs.common.db.migrations import Migration, MigrationContext
from services.stats.models import metadata, promoter_stats, promoter_team_stats


async def _stats_tables(ctx: MigrationContext) -> None:
    await ctx.create_tables(metadata)
    await ctx.create_sharded(promoter_stats)
    await ctx.create_sharded(promoter_team_stats)


MIGRATIONS: list[Migration] = [
    COMMON_MIGRATION,
    Migration(2, "promoter stats per day, team stats, facts, relation projection", _stats_tables),
    outbox_parts_migration(3),
    outbox_part_use_migration(4),
]
