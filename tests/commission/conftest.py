from __future__ import annotations

from datetime import UTC, datetime

import pytest

from libs.common.db.engine import Database
from libs.common.db.migrations import migrate
from libs.common.ids import IdGenerator
from services.commission.context import CommissionContext
from services.commission.migrations import MIGRATIONS, ensure_monthly_tables
from services.commission.models import tables_for
from tests.commission.helpers import Commission


@pytest.fixture
async def commission(db: Database) -> Commission:
    """The commission schema on a fresh database of the backend, this month's tables ready."""
    await migrate(db, MIGRATIONS)
    tables = tables_for("Asia/Shanghai")
    await ensure_monthly_tables(db, tables, datetime.now(UTC), months_ahead=0)
    return Commission(db, CommissionContext(IdGenerator(7), tables))
