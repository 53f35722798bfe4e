"""Attaching a user under a parent, the one step that rebinds, moves and imports alike
(ARCHITECTURE §4); binding by promoter code is in ``bind_batch``.

Every refusal has its own code and is raised before anything is written.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from libs.common.db.engine import Tx
from libs.common.errors import Conflict, NotFound
from libs.common.ids import IdGenerator, shard_of
from libs.common.messaging.outbox import utcnow
from services.user.attaching import Attached, apply_plans, plan_attach, rows_by_key, team_row
from services.user.models import team_counts
from services.user.promoters import APPROVED, DISABLED, load_promoter, resolve_code
from services.user.relations import active_rewrites, effective_path, load_relation

__all__ = ["BIND_SOURCES", "Attached", "approved_promoter_for_code", "attach", "require_approved"]

BIND_SOURCES = ("link", "code", "qr", "admin", "import")


class _Unread:
    """Marks that the caller did not read the user's relation row for ``attach``."""


UNREAD = _Unread()


async def attach(
    tx: Tx,
    ids: IdGenerator,
    user_id: int,
    parent_id: int,
    *,
    source: str,
    kind: str,
    ttl: timedelta | None = None,
    reason: str | None = None,
    event_type: str | None = None,
    current: dict[str, Any] | _Unread | None = UNREAD,
) -> Attached:
    """Put ``user_id`` under ``parent_id`` in this transaction (see ``attaching``).

    Refused (nothing written) when the parent is the user (``relation.self_bind``) or in the
    user's subtree (``relation.cycle``); a concurrent change of the same user loses with
    ``relation.already_bound`` / ``relation.changed``. ``current`` is the relation row the
    caller decided on; the write is guarded on it, so a change made since is a conflict."""
    if parent_id == user_id:
        raise Conflict("a user cannot be bound under itself", code="relation.self_bind")
    now = utcnow()
    rewrites = await active_rewrites(await tx.main())
    if isinstance(current, _Unread):
        current = await load_relation(await tx.shard(shard_of(user_id)), user_id)
    parent_relation = await load_relation(await tx.shard(shard_of(parent_id)), parent_id)
    teams = await rows_by_key(tx, team_counts, "user_id", [user_id])
    plan = plan_attach(
        user_id,
        parent_id,
        parent_path=effective_path(parent_id, parent_relation, rewrites),
        current=current,
        old_path=effective_path(user_id, current, rewrites),
        subtree=team_row(teams, user_id),
        now=now,
        source=source,
        kind=kind,
        ttl=ttl,
        reason=reason,
        event_type=event_type,
    )
    (attached,) = await apply_plans(tx, ids, [plan], now)
    return attached


def require_approved(promoter: dict[str, Any] | None) -> None:
    """Only an approved promoter's code binds (404 unknown, 409 disabled or not approved)."""
    if promoter is None:
        raise NotFound("no promoter has this code", code="promoter.code_not_found")
    if promoter["status"] == DISABLED:
        raise Conflict("this promoter is disabled", code="promoter.disabled")
    if promoter["status"] != APPROVED:
        raise Conflict(
            "this promoter is not approved yet",
            code="promoter.not_approved",
            details={"status": promoter["status"]},
        )


async def approved_promoter_for_code(tx: Tx, code: str) -> int:
    """The approved promoter behind a code (404 unknown, 409 disabled or not approved)."""
    parent_id = await resolve_code(await tx.main(), code)
    if parent_id is None:
        raise NotFound("no promoter has this code", code="promoter.code_not_found")
    require_approved(await load_promoter(await tx.shard(shard_of(parent_id)), parent_id))
    return parent_id
