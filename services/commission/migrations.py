"""Schema versions of the commission service's database(s)."""

from __future__ import annotations

from libs.common.db.common_tables import COMMON_MIGRATION
from libs.common.db.migrations import Migration

MIGRATIONS: list[Migration] = [COMMON_MIGRATION]
