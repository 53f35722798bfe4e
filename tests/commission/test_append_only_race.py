"""Two processes starting together (an API and its worker) both make the ledger's
append-only triggers: neither fails, and the table still refuses UPDATE and DELETE."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from libs.common.db.engine import Database
from services.commission.migrations import make_append_only


async def test_concurrent_trigger_creation_neither_fails(db: Database) -> None:
    async with db.primary.begin() as conn:
        await conn.execute(text("CREATE TABLE race_flow (id INTEGER PRIMARY KEY, amount INTEGER)"))
        await conn.execute(text("INSERT INTO race_flow (id, amount) VALUES (1, 100)"))

    async def start_a_process() -> None:
        async with db.primary.begin() as conn:
            await make_append_only(conn, "race_flow")

    await asyncio.gather(*(start_a_process() for _ in range(4)))
    for statement in ("UPDATE race_flow SET amount = 1", "DELETE FROM race_flow"):
        with pytest.raises(DBAPIError, match="append-only"):
            async with db.primary.begin() as conn:
                await conn.execute(text(statement))
