"""Promoters: apply → approve / reject by an admin, or an admin grant; disable / enable; a
short unique promoter code that fits a WeChat mini-program ``scene`` (32 characters)."""

from __future__ import annotations

import re
import secrets
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.engine import Database, Tx
from libs.common.db.global_index import claim, lookup
from libs.common.errors import Conflict, Forbidden, NotFound
from libs.common.events import PromoterApproved, PromoterStatusChanged
from libs.common.ids import shard_of
from libs.common.messaging.envelope import USER_EVENTS, make_event
from libs.common.messaging.outbox import publish, utcnow
from services.user.models import promoters
from services.user.settings import UserSettings
from services.user.users import require_user

CODE_INDEX = "promoter_code"
# No 0/O, 1/I/L: a code read aloud or typed from a poster cannot be mistaken.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 8
_CODE_PATTERN = re.compile(r"^[0-9A-Za-z]{8,12}$")

PENDING, APPROVED, REJECTED, DISABLED = "pending", "approved", "rejected", "disabled"


def new_code(length: int = CODE_LENGTH) -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(length))


def normalise_code(code: str) -> str | None:
    """A code as stored (upper case), or None for a string that cannot be a code."""
    code = code.strip()
    if not _CODE_PATTERN.match(code):
        return None
    return code.upper()


async def _claim_code(tx: Tx, user_id: int) -> str:
    """A fresh code claimed in the global index. 31^8 ≈ 8.5e11 codes: a collision is rare,
    and after a few the code grows a character (up to 12)."""
    conn = await tx.main()
    for attempt in range(20):
        code = new_code(CODE_LENGTH + min(attempt // 4, 4))
        if await claim(conn, CODE_INDEX, code, user_id) == user_id:
            return code
    raise Conflict("could not allocate a promoter code", code="promoter.code_exhausted")


async def load_promoter(conn: AsyncConnection, user_id: int) -> dict[str, Any] | None:
    table = promoters.for_id(user_id)
    row = (await conn.execute(select(table).where(table.c.user_id == user_id))).mappings().first()
    return dict(row) if row is not None else None


async def _require_promoter(conn: AsyncConnection, user_id: int) -> dict[str, Any]:
    found = await load_promoter(conn, user_id)
    if found is None:
        raise NotFound(f"user {user_id} is not a promoter", code="promoter.not_found")
    return found


async def _publish_approved(tx: Tx, promoter: dict[str, Any]) -> None:
    data = PromoterApproved(
        user_id=promoter["user_id"],
        code=promoter["code"],
        tier=promoter["tier"],
        approved_at=promoter["approved_at"],
    )
    await publish(
        tx,
        USER_EVENTS,
        make_event(
            "promoter.approved",
            promoter["user_id"],
            key=promoter["user_id"],
            data=data.model_dump(mode="json"),
            source="user",
        ),
    )


async def become_promoter(
    tx: Tx, user_id: int, settings: UserSettings, *, by_admin: bool, apply_only: bool = False
) -> tuple[dict[str, Any], bool]:
    """Apply or grant. An admin grants (approved at once) unless ``apply_only``; a user
    applies, approved at once when everyone qualifies, pending under ``apply``, refused
    under ``admin``. A repeat returns the promoter as it is; a rejected user may apply again.
    Returns ``(promoter, created)``."""
    shard = await tx.shard(shard_of(user_id))
    await require_user(shard, user_id)
    qualification = settings.promoter_qualification
    if not by_admin and qualification == "admin":
        raise Forbidden("only an admin can make a promoter", code="promoter.admin_only")
    grant = (by_admin and not apply_only) or qualification == "everyone"
    table = promoters.for_id(user_id)
    now = utcnow()
    existing = await load_promoter(shard, user_id)
    if existing is not None:
        if existing["status"] != REJECTED and not (grant and existing["status"] == PENDING):
            return existing, False
        # A rejected user applies again, or an admin grants a pending application.
        return await _change_status(
            tx, existing, APPROVED if grant else PENDING, from_statuses=(existing["status"],)
        ), False
    code = await _claim_code(tx, user_id)
    row = {
        "user_id": user_id,
        "code": code,
        "status": APPROVED if grant else PENDING,
        "tier": None,
        "status_version": 0,
        "applied_at": now,
        "approved_at": now if grant else None,
        "updated_at": now,
    }
    await shard.execute(table.insert(), [row])
    if grant:
        await _publish_approved(tx, row)
    return row, True


async def _change_status(
    tx: Tx, promoter: dict[str, Any], status: str, *, from_statuses: tuple[str, ...]
) -> dict[str, Any]:
    """Guarded status change (two admins never both win); publishes the fitting event."""
    user_id = promoter["user_id"]
    shard = await tx.shard(shard_of(user_id))
    table = promoters.for_id(user_id)
    now = utcnow()
    values: dict[str, Any] = {
        "status": status,
        "updated_at": now,
        "status_version": table.c.status_version + 1,
    }
    first_approval = status == APPROVED and promoter["approved_at"] is None
    if first_approval:
        values["approved_at"] = now
    result = await shard.execute(
        update(table)
        .where(table.c.user_id == user_id, table.c.status.in_(from_statuses))
        .values(**values)
    )
    if result.rowcount != 1:
        raise Conflict("the promoter changed meanwhile; try again", code="promoter.status_conflict")
    changed = await _require_promoter(shard, user_id)
    if first_approval:
        await _publish_approved(tx, changed)
    elif status in (APPROVED, DISABLED) and promoter["status"] in (APPROVED, DISABLED):
        event_type = "promoter.disabled" if status == DISABLED else "promoter.enabled"
        data = PromoterStatusChanged(
            user_id=user_id, status=status, tier=changed["tier"], changed_at=now
        )
        await publish(
            tx,
            USER_EVENTS,
            make_event(
                event_type,
                f"{user_id}:{changed['status_version']}",
                key=user_id,
                data=data.model_dump(mode="json"),
                source="user",
            ),
        )
    return changed


# For each admin action: the status it leads to, the statuses it may start from, and the
# status in which it is a no-op (approving an approved promoter is a 2xx that changes nothing).
_ACTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "approve": (APPROVED, (PENDING, REJECTED)),
    "reject": (REJECTED, (PENDING,)),
    "disable": (DISABLED, (APPROVED,)),
    "enable": (APPROVED, (DISABLED,)),
}


async def change_promoter(tx: Tx, user_id: int, action: str) -> dict[str, Any]:
    """approve / reject / disable / enable; repeating an action is a no-op; any other
    transition is a 409 ``promoter.invalid_transition``."""
    target, allowed_from = _ACTIONS[action]
    promoter = await _require_promoter(await tx.shard(shard_of(user_id)), user_id)
    if promoter["status"] == target:
        return promoter
    if promoter["status"] not in allowed_from:
        raise Conflict(
            f"cannot {action} a promoter that is {promoter['status']}",
            code="promoter.invalid_transition",
            details={"status": promoter["status"], "action": action},
        )
    return await _change_status(tx, promoter, target, from_statuses=(promoter["status"],))


async def get_promoter(db: Database, user_id: int) -> dict[str, Any]:
    async with db.read_shard(shard_of(user_id), may_lag=True) as conn:
        return await _require_promoter(conn, user_id)


async def resolve_code(main: AsyncConnection, code: str) -> int | None:
    """The user id behind a promoter code, or None (unknown or malformed)."""
    normalised = normalise_code(code)
    if normalised is None:
        return None
    return await lookup(main, CODE_INDEX, normalised)


async def promoter_by_code(db: Database, code: str) -> dict[str, Any]:
    async with db.read(may_lag=True) as main:
        user_id = await resolve_code(main, code)
    if user_id is None:
        raise NotFound("no promoter has this code", code="promoter.code_not_found")
    return await get_promoter(db, user_id)
