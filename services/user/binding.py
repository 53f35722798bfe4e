"""Binding a user under a parent: by promoter code with the four bind modes, and the one
``attach`` step that binds, rebinds and moves alike (ARCHITECTURE §4).

Every refusal has its own code and is raised before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.engine import Tx
from libs.common.db.sql import insert_ignore, upsert_add
from libs.common.errors import Conflict, NotFound
from libs.common.events import UserBound
from libs.common.ids import IdGenerator, shard_of
from libs.common.messaging.envelope import USER_EVENTS, make_event
from libs.common.messaging.outbox import publish, utcnow
from services.user import paths
from services.user.models import bind_history, move_jobs, relations, team_counts
from services.user.promoters import APPROVED, DISABLED, load_promoter, resolve_code
from services.user.relations import (
    RUNNING,
    active_rewrites,
    ancestors_of,
    effective_path,
    is_active,
    load_relation,
    relation_view,
)
from services.user.settings import UserSettings
from services.user.users import registered_within, require_user

BIND_SOURCES = ("link", "code", "qr", "admin", "import")
_LEVEL_COLUMNS = ("level1_count", "level2_count", "level3_count")


class _Unread:
    """Marks that the caller did not read the user's relation row for ``attach``."""


UNREAD = _Unread()


@dataclass
class Attached:
    relation: dict[str, Any]  # the API view
    changed: bool
    move_job_id: int | None = None


async def _team_row(conn: AsyncConnection, user_id: int) -> dict[str, int]:
    table = team_counts.for_id(user_id)
    row = (await conn.execute(select(table).where(table.c.user_id == user_id))).mappings().first()
    return {c: int(row[c]) if row else 0 for c in (*_LEVEL_COLUMNS, "team_size")}


async def _shift_level_counts(
    tx: Tx, ancestors: list[int], subtree: dict[str, int], sign: int
) -> None:
    """Levels 1-3 of the nearest three ancestors gain (or lose) the user and the user's own
    levels 1-2: at most three rows, in the bind transaction."""
    # The moved user is at depth 1 below its parent, its children at depth 2, ...
    below = [1, subtree["level1_count"], subtree["level2_count"]]
    for distance, ancestor in enumerate(ancestors[:3], start=1):
        delta = {c: 0 for c in _LEVEL_COLUMNS}
        for depth_below, count in enumerate(below):
            level = distance + depth_below
            if level <= 3 and count:
                delta[f"level{level}_count"] += sign * count
        if any(delta.values()):
            await upsert_add(
                await tx.shard(shard_of(ancestor)),
                team_counts.for_id(ancestor),
                [{"user_id": ancestor, **delta, "team_size": 0}],
                ["user_id"],
                list(_LEVEL_COLUMNS),
            )


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
    """Put ``user_id`` under ``parent_id``: the relation row, bind history, level 1-3 team
    counts of old and new ancestors, a move job for the user's subtree (when it has one) and
    the user.bound / user.rebound / user.moved event, all in this transaction.

    Refused (nothing written) when the parent is the user (``relation.self_bind``) or in the
    user's subtree (``relation.cycle``); a concurrent change of the same user loses with
    ``relation.already_bound`` / ``relation.changed``. ``current`` is the relation row the
    caller decided on; the write is guarded on it, so a change made since is a conflict."""
    if parent_id == user_id:
        raise Conflict("a user cannot be bound under itself", code="relation.self_bind")
    now = utcnow()
    rewrites = await active_rewrites(await tx.main())
    shard = await tx.shard(shard_of(user_id))
    if isinstance(current, _Unread):
        current = await load_relation(shard, user_id)
    parent_shard = await tx.shard(shard_of(parent_id))
    parent_relation = await load_relation(parent_shard, parent_id)
    parent_path = effective_path(parent_id, parent_relation, rewrites)
    # The new parent must not be in the user's subtree: the user is then on its path.
    if paths.contains(parent_path, user_id):
        raise Conflict(
            "the new parent is in the user's team: that would make a cycle",
            code="relation.cycle",
            details={"user_id": str(user_id), "parent_id": str(parent_id)},
        )
    old_path = effective_path(user_id, current, rewrites)
    new_path = paths.child_path(parent_path, user_id)
    new_ids = paths.ids_of(new_path)
    row = {
        "user_id": user_id,
        "parent_id": parent_id,
        "root_id": new_ids[0],
        "level": len(new_ids),
        "path": new_path,
        "bound_at": now,
        "bind_source": source,
        "expires_at": now + ttl if ttl is not None else None,
    }
    table = relations.for_id(user_id)
    if current is None:
        if not await insert_ignore(shard, table, [row]):
            raise Conflict("the user was bound meanwhile", code="relation.already_bound")
    else:
        # Guarded on the row as we read it: of two concurrent changes exactly one wins.
        result = await shard.execute(
            update(table)
            .where(
                table.c.user_id == user_id,
                table.c.parent_id == current["parent_id"],
                table.c.bound_at == current["bound_at"],
                table.c.path == current["path"],
            )
            .values(**{k: v for k, v in row.items() if k != "user_id"})
        )
        if result.rowcount != 1:
            raise Conflict("the user's relation changed meanwhile", code="relation.changed")
    history_id = ids.next_id_for(user_id)
    await shard.execute(
        bind_history.for_id(user_id).insert(),
        [
            {
                "id": history_id,
                "user_id": user_id,
                "parent_id": parent_id,
                "previous_parent_id": current["parent_id"] if current else None,
                "kind": kind,
                "bind_source": source,
                "reason": reason,
                "created_at": now,
            }
        ],
    )
    subtree = await _team_row(shard, user_id)
    old_ancestors = ancestors_of(old_path, len(old_path))
    new_ancestors = ancestors_of(new_path, len(new_path))
    await _shift_level_counts(tx, old_ancestors, subtree, -1)
    await _shift_level_counts(tx, new_ancestors, subtree, +1)
    job_id = None
    if subtree["level1_count"] > 0:
        job_id = ids.next_id()
        await (await tx.main()).execute(
            move_jobs.insert(),
            [
                {
                    "id": job_id,
                    "user_id": user_id,
                    "old_prefix": old_path,
                    "new_prefix": new_path,
                    "level_delta": len(new_ids) - len(paths.ids_of(old_path)),
                    "new_root_id": new_ids[0],
                    "old_ancestor_ids": json.dumps(old_ancestors),
                    "new_ancestor_ids": json.dumps(new_ancestors),
                    "status": RUNNING,
                    "rows_done": 0,
                    "reason": reason,
                    "created_at": now,
                    "updated_at": now,
                    "finished_at": None,
                }
            ],
        )
    event_type = event_type or ("user.rebound" if current else "user.bound")
    data = UserBound(
        user_id=user_id,
        parent_id=parent_id,
        previous_parent_id=current["parent_id"] if current else None,
        ancestor_ids=new_ancestors,
        level=len(new_ids),
        bind_source=source,
        bound_at=now,
        # Whole-team counts follow stored paths: a running move job counts the rows it
        # rewrites, so a row that changes before the job reaches it leaves the ancestors of
        # its stored path (docs/decisions/0103-team-counts.md).
        previous_ancestor_ids=ancestors_of(current["path"], len(current["path"]))
        if current
        else [],
    )
    await publish(
        tx,
        USER_EVENTS,
        make_event(
            event_type,
            history_id,
            key=user_id,
            data=data.model_dump(mode="json"),
            source="user",
        ),
    )
    return Attached(relation_view(user_id, row, new_path, now), True, job_id)


async def approved_promoter_for_code(tx: Tx, code: str) -> int:
    """The approved promoter behind a code (404 unknown, 409 disabled or not approved)."""
    parent_id = await resolve_code(await tx.main(), code)
    if parent_id is None:
        raise NotFound("no promoter has this code", code="promoter.code_not_found")
    promoter = await load_promoter(await tx.shard(shard_of(parent_id)), parent_id)
    if promoter is None:  # pragma: no cover - a code is only claimed with its promoter
        raise NotFound("no promoter has this code", code="promoter.code_not_found")
    if promoter["status"] == DISABLED:
        raise Conflict("this promoter is disabled", code="promoter.disabled")
    if promoter["status"] != APPROVED:
        raise Conflict(
            "this promoter is not approved yet",
            code="promoter.not_approved",
            details={"status": promoter["status"]},
        )
    return parent_id


async def bind_by_code(
    tx: Tx, ids: IdGenerator, settings: UserSettings, user_id: int, code: str, source: str
) -> Attached:
    """Bind a user under the promoter whose code they used, as the bind mode allows.

    Binding again under the same parent is a no-op (the relation as it is); under another
    parent, ``first``, ``register_only`` and an unexpired ``expiring`` bind refuse with
    ``relation.already_bound``; ``override`` rebinds. ``register_only`` refuses users
    registered longer than ``register_window_minutes`` ago."""
    user = await require_user(await tx.shard(shard_of(user_id)), user_id)
    parent_id = await approved_promoter_for_code(tx, code)
    if parent_id == user_id:
        raise Conflict("a user cannot be bound under itself", code="relation.self_bind")
    now = utcnow()
    current = await load_relation(await tx.shard(shard_of(user_id)), user_id)
    if is_active(current, now):
        assert current is not None
        if current["parent_id"] == parent_id:
            rewrites = await active_rewrites(await tx.main())
            path = effective_path(user_id, current, rewrites)
            return Attached(relation_view(user_id, current, path, now), False)
        if settings.bind_mode != "override":
            raise Conflict(
                "the user is already bound",
                code="relation.already_bound",
                details={"parent_id": str(current["parent_id"]), "bind_mode": settings.bind_mode},
            )
    if settings.bind_mode == "register_only" and not registered_within(
        user, now, settings.register_window_minutes
    ):
        raise Conflict(
            "only newly registered users can be bound",
            code="relation.register_window_closed",
            details={"register_window_minutes": settings.register_window_minutes},
        )
    ttl = timedelta(days=settings.bind_ttl_days) if settings.bind_mode == "expiring" else None
    return await attach(
        tx,
        ids,
        user_id,
        parent_id,
        source=source,
        kind="rebind" if current else "bind",
        ttl=ttl,
        current=current,
    )
