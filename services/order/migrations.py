"""Schema versions of the order service's database(s)."""

from __future__ import annotations

from libs.common.db.common_tables import (
    COMMON_MIGRATION,
    outbox_part_use_migration,
    outbox_parts_migration,
)
from libs.common.db.migrations import Migration, MigrationContext
from services.order.models import order_items, orders, refunds


async def _order_tables(ctx: MigrationContext) -> None:
    for sharded in (orders, order_items, refunds):
        await ctx.create_sharded(sharded)


MIGRATIONS: list[Migration] = [
    COMMON_MIGRATION,
    Migration(2, "orders, order items and refunds, sharded by buyer", _order_tables),
    outbox_parts_migration(3),
    outbox_part_use_migration(4),
]
