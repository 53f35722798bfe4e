"""Reading the relation tree: a user's relation, ancestors from the path, direct children
(fanned out over the shards), team counts (pre-aggregated, never a subtree scan)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Select, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.engine import Database
from libs.common.db.prepared import Prepared
from libs.common.errors import BadRequest
from libs.common.ids import shard_of
from services.user import paths
from services.user.fan_out import across_shards_prepared
from services.user.models import move_jobs, relations, team_counts
from services.user.users import require_user

RUNNING = "running"


class Rewrite(NamedTuple):
    """A running move job: stored paths under ``old_prefix`` written before ``created_at``
    read as under ``new_prefix``."""

    old_prefix: str
    new_prefix: str
    created_at: datetime


_ACTIVE_REWRITES = Prepared(
    select(move_jobs.c.old_prefix, move_jobs.c.new_prefix, move_jobs.c.created_at)
    .where(move_jobs.c.status == bindparam("status"))
    .order_by(move_jobs.c.id)
)


async def active_rewrites(main: AsyncConnection) -> list[Rewrite]:
    """Subtree moves whose job is still rewriting paths, oldest first (normally none)."""
    rows = await _ACTIVE_REWRITES.rows(main, {"status": RUNNING})
    return [Rewrite(row["old_prefix"], row["new_prefix"], row["created_at"]) for row in rows]


_RELATION_OF = [
    Prepared(select(table).where(table.c.user_id == bindparam("user_id")))
    for table in relations.tables
]


_TEAM_OF = [
    Prepared(select(table).where(table.c.user_id == bindparam("user_id")))
    for table in team_counts.tables
]


async def load_relation(conn: AsyncConnection, user_id: int) -> dict[str, Any] | None:
    rows = await _RELATION_OF[shard_of(user_id)].rows(conn, {"user_id": user_id})
    return rows[0] if rows else None


def is_active(relation: dict[str, Any] | None, now: datetime) -> bool:
    """A binding counts until its ``expires_at`` (None = permanent)."""
    return relation is not None and (relation["expires_at"] is None or relation["expires_at"] > now)


def effective_path(user_id: int, relation: dict[str, Any] | None, rewrites: list[Rewrite]) -> str:
    """The user's path as it is (or will be, once running move jobs are through).

    A job rewrites only rows written before it was created: a path written later was
    computed with the job's move already applied, and may even start with the job's old
    prefix again (a user moved back where it was) without being stale."""
    if relation is None:
        return paths.root_path(user_id)
    written_at = relation["bound_at"]
    return paths.rewrite(
        relation["path"],
        [(r.old_prefix, r.new_prefix) for r in rewrites if r.created_at > written_at],
    )


def ancestors_of(path: str, levels: int) -> list[int]:
    """Ancestor ids nearest first (parent, grandparent, ...), at most ``levels``."""
    return paths.nearest_ancestors(path, levels)


def relation_view(
    user_id: int,
    relation: dict[str, Any] | None,
    path: str,
    now: datetime,
    level: int | None = None,
    shown_path: str | None = None,
) -> dict[str, Any]:
    """The relation as the API shows it; a user bound under nobody is a root of itself.
    ``level`` and ``shown_path`` (the path with decimal ids) are given when the caller knows
    them: counting and converting a deep path cost more than the rest of the view."""
    parent = paths.nearest_ancestors(path, 1)
    return {
        "user_id": user_id,
        "parent_id": parent[0] if parent else None,
        "root_id": paths.first_id(path),
        "level": paths.depth_of(path) if level is None else level,
        "path": paths.decimal_path(path) if shown_path is None else shown_path,
        "bound_at": relation["bound_at"] if relation else None,
        "bind_source": relation["bind_source"] if relation else None,
        "expires_at": relation["expires_at"] if relation else None,
        "active": is_active(relation, now),
    }


async def read_path(db: Database, user_id: int) -> tuple[dict[str, Any] | None, str]:
    """The user's relation row and effective path: one primary-key read of the shard (plus
    the list of running move jobs, an indexed read that is normally empty)."""
    async with db.read(may_lag=True) as main:
        rewrites = await active_rewrites(main)
    async with db.read_shard(shard_of(user_id), may_lag=True) as conn:
        relation = await load_relation(conn, user_id)
        if relation is None:
            await require_user(conn, user_id)
    return relation, effective_path(user_id, relation, rewrites)


async def get_relation(db: Database, user_id: int, now: datetime) -> dict[str, Any]:
    relation, path = await read_path(db, user_id)
    return relation_view(user_id, relation, path, now)


async def get_ancestors(db: Database, user_id: int, levels: int) -> list[int]:
    """The user's ancestors, nearest first (the parent is level 1), at most ``levels``."""
    _, path = await read_path(db, user_id)
    return ancestors_of(path, levels)


def _parse_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    if not cursor.isascii() or not cursor.isdigit() or len(cursor) > 19:
        raise BadRequest("malformed cursor", code="request.bad_cursor")
    return int(cursor)


def _children_in(shard: int) -> Select[Any]:
    table = relations.for_shard(shard)
    return (
        select(
            table.c.user_id,
            table.c.bound_at,
            table.c.bind_source,
            table.c.level,
            table.c.expires_at,
        )
        .where(table.c.parent_id == bindparam("parent_id"), table.c.user_id > bindparam("after"))
        .order_by(table.c.user_id)
        .limit(bindparam("limit"))
    )


async def get_children(
    db: Database, user_id: int, cursor: str | None, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Direct children ordered by user id, ``limit`` per page. Children live in their own
    shards, so each physical database answers one UNION ALL of its shards' first ``limit``
    rows after the cursor (concurrently), and the pages merge."""
    after = _parse_cursor(cursor)
    async with db.read_shard(shard_of(user_id)) as conn:
        await require_user(conn, user_id)

    found = await across_shards_prepared(
        db,
        "children",
        _children_in,
        {"parent_id": user_id, "after": after, "limit": limit + 1},
        "user_id",
    )
    page = found[:limit]
    next_cursor = str(page[-1]["user_id"]) if len(found) > limit else None
    return page, next_cursor


async def get_team(db: Database, user_id: int) -> dict[str, Any]:
    """Team counts by level (1-3, exact in the bind transaction) and the whole team (applied
    from user.bound events, so it may trail by the consumer's lag)."""
    async with db.read_shard(shard_of(user_id)) as conn:
        rows = await _TEAM_OF[shard_of(user_id)].rows(conn, {"user_id": user_id})
        if not rows:
            await require_user(conn, user_id)
    counts = rows[0] if rows else {}
    return {
        "user_id": user_id,
        "level1_count": int(counts.get("level1_count", 0)),
        "level2_count": int(counts.get("level2_count", 0)),
        "level3_count": int(counts.get("level3_count", 0)),
        "team_size": int(counts.get("team_size", 0)),
    }
