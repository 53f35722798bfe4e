"""Schema versions of the order service's database(s)."""

from __future__ import annotations

from libs.common.db.migrations import Migration
from libs.common.diagnostics import COMMON_MIGRATION

MIGRATIONS: list[Migration] = [COMMON_MIGRATION]
