"""Fixtures of the user service tests: a migrated database and small helpers that go
through the same service functions as the API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from libs.common.business_settings import SettingsStore
from libs.common.db.engine import Database, Tx
from libs.common.db.migrations import migrate
from libs.common.ids import IdGenerator
from libs.common.messaging.outbox import ROW, outbox, whole_rows
from services.user import promoters, users
from services.user.bind_batch import bind_by_code
from services.user.binding import Attached
from services.user.migrations import MIGRATIONS
from services.user.moves import move_user, run_move_batch
from services.user.settings import UserSettings

T = TypeVar("T")


class UserWorld:
    """The user service's use cases over one real database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.ids = IdGenerator(7)
        self.settings = SettingsStore(UserSettings, db)

    async def run(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        return await self.db.run(work)

    async def configure(self, **patch: Any) -> UserSettings:
        async def work(tx: Tx) -> UserSettings:
            return await self.settings.update(tx, patch)

        return await self.run(work)

    async def user(self, external_id: str, platform: str = "default") -> int:
        async def work(tx: Tx) -> tuple[dict[str, Any], bool]:
            return await users.create_user(
                tx, self.ids, users.NewUser(external_id=external_id, platform=platform)
            )

        user, _ = await self.run(work)
        return int(user["id"])

    async def promoter(self, external_id: str) -> tuple[int, str]:
        """A new user granted promotion by an admin: (user id, code)."""
        user_id = await self.user(external_id)

        async def work(tx: Tx) -> tuple[dict[str, Any], bool]:
            return await promoters.become_promoter(
                tx, user_id, await self.settings.in_tx(tx), by_admin=True
            )

        promoter, _ = await self.run(work)
        return user_id, str(promoter["code"])

    async def bind(self, user_id: int, code: str, source: str = "code") -> Attached:
        async def work(tx: Tx) -> Attached:
            return await bind_by_code(
                tx, self.ids, await self.settings.in_tx(tx), user_id, code, source
            )

        return await self.run(work)

    async def move(self, user_id: int, parent_id: int, reason: str = "test") -> Attached:
        async def work(tx: Tx) -> Attached:
            return await move_user(tx, self.ids, user_id, parent_id, reason)

        return await self.run(work)

    async def finish_moves(self, batch_size: int = 500) -> int:
        batches = 0
        while await run_move_batch(self.db, batch_size):
            batches += 1
        return batches

    async def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        import orjson

        async with self.db.read(may_lag=False) as conn:
            rows = await conn.execute(select(*ROW).order_by(outbox.c.seq))
            found = [orjson.loads(payload) for *_, payload in await whole_rows(conn, rows.all())]
        return [e for e in found if event_type is None or e["type"] == event_type]


@pytest.fixture
async def world(db: Database) -> UserWorld:
    await migrate(db, MIGRATIONS)
    return UserWorld(db)
