"""Schema versions of the user service's database(s)."""

from __future__ import annotations

from libs.common.db.common_tables import COMMON_MIGRATION
from libs.common.db.migrations import Migration, MigrationContext
from services.user.models import SHARDED, main_metadata


async def _user_tables(ctx: MigrationContext) -> None:
    await ctx.create_tables(main_metadata)
    for sharded in SHARDED:
        await ctx.create_sharded(sharded)


MIGRATIONS: list[Migration] = [
    COMMON_MIGRATION,
    Migration(2, "users, promoters, relation tree, team counts, bind history, jobs", _user_tables),
]
