"""Users: created by platforms with their own ``external_id``, unique per ``platform``;
their personal data sealed at rest (services/user/pii.py)."""

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
from services.user.pii import UserPii, default_pii, find_by_phone

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


async def create_user(
    tx: Tx, ids: IdGenerator, new: NewUser, pii: UserPii | None = None
) -> tuple[dict[str, Any], bool]:
    """Create a user, or return the one a platform already created with this external id
    (idempotent on ``(platform, external_id)``). Returns ``(user, created)``, the user's
    personal fields in clear. They are stored sealed (services/user/pii.py) with ``pii``'s
    keys, by default those of the environment."""
    pii = pii or default_pii()
    user_id = ids.next_id()
    owner = await claim(
        await tx.main(), USER_INDEX, _index_value(new.platform, new.external_id), user_id
    )
    if owner != user_id:
        existing = await load_user(await tx.shard(shard_of(owner)), owner)
        if existing is None:  # pragma: no cover - the claim commits after the user row
            raise NotFound(f"user {owner} not found", code="user.not_found")
        return pii.open(existing), False
    now = utcnow()
    plain = {"nickname": new.nickname, "phone": new.phone, "device_id": new.device_id}
    row = {
        "id": user_id,
        "platform": new.platform,
        "external_id": new.external_id,
        "created_at": now,
        **pii.seal(user_id, plain),
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
    return pii.open(row), True


async def load_user(conn: AsyncConnection, user_id: int) -> dict[str, Any] | None:
    """The stored row (personal fields sealed: :meth:`UserPii.open` shows them)."""
    table = users.for_id(user_id)
    row = (await conn.execute(select(table).where(table.c.id == user_id))).mappings().first()
    return dict(row) if row is not None else None


async def require_user(conn: AsyncConnection, user_id: int) -> dict[str, Any]:
    user = await load_user(conn, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found", code="user.not_found")
    return user


async def get_user(db: Database, user_id: int, pii: UserPii | None = None) -> dict[str, Any]:
    """The user with personal fields in clear (404 ``user.not_found``; 500
    ``user.pii_unreadable`` if a sealed field was tampered with)."""
    async with db.read_shard(shard_of(user_id), may_lag=True) as conn:
        row = await require_user(conn, user_id)
    return (pii or default_pii()).open(row)


async def find_users_by_phone(
    db: Database, pii: UserPii, phone: str, *, platform: str | None
) -> list[dict[str, Any]]:
    """Users with this phone (any formatting), of ``platform`` if given (400
    ``user.invalid_phone`` for text that is not a phone number)."""
    return await find_by_phone(db, pii, phone, platform=platform)


def registered_within(user: dict[str, Any], now: datetime, minutes: int) -> bool:
    return (now - user["created_at"]).total_seconds() <= minutes * 60
