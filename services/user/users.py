"""Users: created by platforms with their own ``external_id``, unique per ``platform``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.engine import Database, Tx
from libs.common.db.global_index import claim
from libs.common.errors import NotFound
from libs.common.events import UserRegistered
from libs.common.ids import IdGenerator, shard_of
from libs.common.messaging.envelope import USER_EVENTS, make_event
from libs.common.messaging.outbox import publish, utcnow
from services.user.models import users

USER_INDEX = "user"


@dataclass
class NewUser:
    external_id: str
    platform: str = "default"
    nickname: str | None = None
    phone: str | None = None
    device_id: str | None = None


def _index_value(platform: str, external_id: str) -> str:
    return f"{platform}:{external_id}"


async def create_user(tx: Tx, ids: IdGenerator, new: NewUser) -> tuple[dict[str, Any], bool]:
    """Create a user, or return the one a platform already created with this external id
    (idempotent on ``(platform, external_id)``). Returns ``(user, created)``."""
    user_id = ids.next_id()
    owner = await claim(
        await tx.main(), USER_INDEX, _index_value(new.platform, new.external_id), user_id
    )
    if owner != user_id:
        existing = await load_user(await tx.shard(shard_of(owner)), owner)
        if existing is None:  # pragma: no cover - the claim commits after the user row
            raise NotFound(f"user {owner} not found", code="user.not_found")
        return existing, False
    now = utcnow()
    row = {
        "id": user_id,
        "platform": new.platform,
        "external_id": new.external_id,
        "nickname": new.nickname,
        "phone": new.phone,
        "device_id": new.device_id,
        "created_at": now,
    }
    await (await tx.shard(shard_of(user_id))).execute(users.for_id(user_id).insert(), [row])
    await publish(
        tx,
        USER_EVENTS,
        make_event(
            "user.registered",
            user_id,
            key=user_id,
            data=UserRegistered(
                user_id=user_id,
                platform=new.platform,
                external_id=new.external_id,
                registered_at=now,
            ).model_dump(mode="json"),
            source="user",
        ),
    )
    return row, True


async def load_user(conn: AsyncConnection, user_id: int) -> dict[str, Any] | None:
    table = users.for_id(user_id)
    row = (await conn.execute(select(table).where(table.c.id == user_id))).mappings().first()
    return dict(row) if row is not None else None


async def require_user(conn: AsyncConnection, user_id: int) -> dict[str, Any]:
    user = await load_user(conn, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found", code="user.not_found")
    return user


async def get_user(db: Database, user_id: int) -> dict[str, Any]:
    async with db.read_shard(shard_of(user_id), may_lag=True) as conn:
        return await require_user(conn, user_id)


def registered_within(user: dict[str, Any], now: datetime, minutes: int) -> bool:
    return (now - user["created_at"]).total_seconds() <= minutes * 60
