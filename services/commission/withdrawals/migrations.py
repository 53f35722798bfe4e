"""Schema steps of withdrawals (versions 50 and up in the commission service's list)."""

from __future__ import annotations

from libs.common.db.migrations import Migration, MigrationContext
from services.commission.withdrawals.models import metadata


async def _create_withdrawal_tables(ctx: MigrationContext) -> None:
    await ctx.create_tables(metadata)


MIGRATIONS: list[Migration] = [
    Migration(
        50, "withdrawals: payees, withdrawals, promoter locks, payouts", _create_withdrawal_tables
    ),
]
