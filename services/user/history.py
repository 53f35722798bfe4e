"""Bind history: every bind, rebind and move of a user, newest first."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from libs.common.db.engine import Database
from libs.common.ids import shard_of
from services.user.models import bind_history
from services.user.users import require_user


async def get_history(db: Database, user_id: int, limit: int = 100) -> list[dict[str, Any]]:
    table = bind_history.for_id(user_id)
    async with db.read_shard(shard_of(user_id)) as conn:
        await require_user(conn, user_id)
        rows = await conn.execute(
            select(table).where(table.c.user_id == user_id).order_by(table.c.id.desc()).limit(limit)
        )
        return [dict(row) for row in rows.mappings()]
