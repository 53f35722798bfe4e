"""Putting users under parents: a change is planned from what was read (refusals first,
nothing written), then any number of plans are written together with set-based statements.

Binds, rebinds, moves and imports all end here, one plan or a batch of them (the bind queue
of ``bind_batch``): the relation rows, bind history, level 1-3 team counts of old and new
ancestors, a move job for a user's subtree (when it has one) and the user.bound /
user.rebound / user.moved events, all in the caller's transaction.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BindParameter, Table, bindparam, select, update

from libs.common.db.engine import Tx
from libs.common.db.prepared import Prepared, PreparedUnion, runs_inline
from libs.common.db.sharding import ShardedTable
from libs.common.db.sql import insert_ignore, insert_rows, upsert_add
from libs.common.errors import Conflict
from libs.common.ids import SHARD_COUNT, IdGenerator, shard_of
from libs.common.messaging.envelope import USER_EVENTS, Envelope, make_event
from libs.common.messaging.outbox import publish
from services.user import paths
from services.user.models import bind_history, move_jobs, relations, team_counts
from services.user.relations import RUNNING, ancestors_of, relation_view

LEVEL_COLUMNS = ("level1_count", "level2_count", "level3_count")
USER_BOUND_VERSION = 2  # ancestors as compact paths (docs/decisions/0108)
# Every bind under one parent carries the same ancestors: a deep chain is stored once in the
# outbox, not once per event (docs/decisions/0805).
SHARED_FIELDS = ("ancestor_path", "previous_ancestor_path")


@dataclass
class Attached:
    relation: dict[str, Any]  # the API view
    changed: bool
    move_job_id: int | None = None


@dataclass
class Plan:
    """One user's change of parent, decided and checked, not yet written."""

    user_id: int
    parent_id: int
    current: dict[str, Any] | None  # the relation row as read; the write is guarded on it
    old_path: str
    parent_path: str  # the new parent's effective path
    new_path: str
    row: dict[str, Any]  # the new relation row
    subtree: dict[str, int]  # the user's own level 1-3 counts (its team moves with it)
    kind: str  # bind | rebind | move | import
    reason: str | None
    event_type: str

    @property
    def counted_ancestors(self) -> set[int]:
        """Whose level 1-3 counts this change shifts: the nearest three old and new ancestors."""
        return {*ancestors_of(self.old_path, 3), *ancestors_of(self.new_path, 3)}

    @property
    def moves_a_team(self) -> bool:
        """The user has a team: its paths are rewritten by a move job."""
        return self.subtree["level1_count"] > 0


def plan_attach(
    user_id: int,
    parent_id: int,
    *,
    parent_path: str,
    current: dict[str, Any] | None,
    old_path: str,
    subtree: dict[str, int],
    now: datetime,
    source: str,
    kind: str,
    ttl: timedelta | None = None,
    reason: str | None = None,
    event_type: str | None = None,
) -> Plan:
    """Plan putting ``user_id`` under ``parent_id`` (whose effective path is
    ``parent_path``). Refused when the parent is the user (``relation.self_bind``) or in the
    user's subtree (``relation.cycle``): the user is then on the parent's path."""
    if parent_id == user_id:
        raise Conflict("a user cannot be bound under itself", code="relation.self_bind")
    if paths.contains(parent_path, user_id):
        raise Conflict(
            "the new parent is in the user's team: that would make a cycle",
            code="relation.cycle",
            details={"user_id": str(user_id), "parent_id": str(parent_id)},
        )
    new_path = paths.child_path(parent_path, user_id)
    row = {
        "user_id": user_id,
        "parent_id": parent_id,
        "root_id": paths.first_id(new_path),
        "level": paths.depth_of_cached(parent_path) + 1,
        "path": new_path,
        "bound_at": now,
        "bind_source": source,
        "expires_at": now + ttl if ttl is not None else None,
    }
    return Plan(
        user_id=user_id,
        parent_id=parent_id,
        current=current,
        old_path=old_path,
        parent_path=parent_path,
        new_path=new_path,
        row=row,
        subtree=subtree,
        kind=kind,
        reason=reason,
        event_type=event_type or ("user.rebound" if current else "user.bound"),
    )


_ROWS_BY_KEY: dict[tuple[str, str], PreparedUnion] = {}


def _rows_by_key_statement(table: ShardedTable, key: str) -> PreparedUnion:
    """SELECT ... WHERE key IN :ids_<shard> for each shard, any of them joined with UNION
    ALL. Built once per table: building the expressions costs more than running them."""
    statement = _ROWS_BY_KEY.get((table.base, key))
    if statement is None:
        parts = {}
        for shard in range(SHARD_COUNT):
            copy = table.for_shard(shard)
            ids: BindParameter[list[int]] = bindparam(f"ids_{shard}", expanding=True)
            parts[shard] = Prepared(select(copy).where(copy.c[key].in_(ids)))
        statement = _ROWS_BY_KEY[(table.base, key)] = PreparedUnion(parts)
    return statement


async def rows_by_key(
    tx: Tx, table: ShardedTable, key: str, ids: Iterable[int]
) -> dict[int, dict[str, Any]]:
    """Rows of a user-keyed table for many ids: one statement per physical database, the
    shards that hold any of the ids joined with UNION ALL, not one per id. On an inline
    SQLite connection, where a statement costs microseconds, one small statement per shard
    instead: SQLite keeps those parsed, while the union's text changes with the shards."""
    by_shard: dict[int, list[int]] = defaultdict(list)
    for entity_id in set(ids):
        by_shard[shard_of(entity_id)].append(entity_id)
    found: dict[int, dict[str, Any]] = {}
    if not by_shard:
        return found
    statement = _rows_by_key_statement(table, key)
    for shards in tx.db.shards_by_url().values():
        wanted = [shard for shard in shards if shard in by_shard]
        if not wanted:
            continue
        conn = await tx.shard(shards[0])
        groups = [[shard] for shard in wanted] if runs_inline(conn) else [wanted]
        for group in groups:
            parameters = {f"ids_{shard}": by_shard[shard] for shard in group}
            for row in await statement.rows(conn, group, parameters):
                found[int(row[key])] = row
    return found


def team_row(found: dict[int, dict[str, Any]], user_id: int) -> dict[str, int]:
    row = found.get(user_id)
    return {c: int(row[c]) if row else 0 for c in (*LEVEL_COLUMNS, "team_size")}


def _level_deltas(
    totals: dict[int, dict[str, int]], ancestors: list[int], subtree: dict[str, int], sign: int
) -> None:
    """Levels 1-3 of the nearest three ancestors gain (or lose) the user and the user's own
    levels 1-2: at most three rows per change."""
    # The moved user is at depth 1 below its parent, its children at depth 2, ...
    below = [1, subtree["level1_count"], subtree["level2_count"]]
    for distance, ancestor in enumerate(ancestors[:3], start=1):
        for depth_below, count in enumerate(below):
            level = distance + depth_below
            if level <= 3 and count:
                delta = totals.setdefault(ancestor, dict.fromkeys(LEVEL_COLUMNS, 0))
                delta[f"level{level}_count"] += sign * count


def _group(rows: Iterable[tuple[Table, dict[str, Any]]]) -> dict[Table, list[dict[str, Any]]]:
    grouped: dict[Table, list[dict[str, Any]]] = defaultdict(list)
    for table, row in rows:
        grouped[table].append(row)
    return grouped


async def apply_plans(
    tx: Tx, ids: IdGenerator, plans: Sequence[Plan], now: datetime
) -> list[Attached]:
    """Write planned changes of distinct users. A concurrent change of one of them (another
    process) makes the whole call fail with ``relation.already_bound`` / ``relation.changed``,
    so the caller's transaction rolls back; a batch is then retried one plan at a time."""
    inserts = _group((relations.for_id(p.user_id), p.row) for p in plans if p.current is None)
    for table, rows in inserts.items():
        if await insert_ignore(await tx.shard(shard_of(rows[0]["user_id"])), table, rows) != len(
            rows
        ):
            raise Conflict("the user was bound meanwhile", code="relation.already_bound")
    for plan in plans:
        if plan.current is None:
            continue
        table = relations.for_id(plan.user_id)
        # Guarded on the row as we read it: of two concurrent changes exactly one wins.
        result = await (await tx.shard(shard_of(plan.user_id))).execute(
            update(table)
            .where(
                table.c.user_id == plan.user_id,
                table.c.parent_id == plan.current["parent_id"],
                table.c.bound_at == plan.current["bound_at"],
                table.c.path == plan.current["path"],
            )
            .values(**{k: v for k, v in plan.row.items() if k != "user_id"})
        )
        if result.rowcount != 1:
            raise Conflict("the user's relation changed meanwhile", code="relation.changed")

    history_ids = [ids.next_id_for(p.user_id) for p in plans]
    history = _group(
        (
            bind_history.for_id(p.user_id),
            {
                "id": history_id,
                "user_id": p.user_id,
                "parent_id": p.parent_id,
                "previous_parent_id": p.current["parent_id"] if p.current else None,
                "kind": p.kind,
                "bind_source": p.row["bind_source"],
                "reason": p.reason,
                "created_at": now,
            },
        )
        for p, history_id in zip(plans, history_ids, strict=True)
    )
    for table, rows in history.items():
        await insert_rows(await tx.shard(shard_of(rows[0]["user_id"])), table, rows)

    totals: dict[int, dict[str, int]] = {}
    for plan in plans:
        _level_deltas(totals, ancestors_of(plan.old_path, 3), plan.subtree, -1)
        _level_deltas(totals, ancestors_of(plan.new_path, 3), plan.subtree, +1)
    counts = _group(
        (team_counts.for_id(ancestor), {"user_id": ancestor, **delta, "team_size": 0})
        for ancestor, delta in sorted(totals.items())
        if any(delta.values())
    )
    for table, rows in counts.items():
        await upsert_add(
            await tx.shard(shard_of(rows[0]["user_id"])),
            table,
            rows,
            ["user_id"],
            list(LEVEL_COLUMNS),
        )

    attached: list[Attached] = []
    events: list[Envelope] = []
    for plan, history_id in zip(plans, history_ids, strict=True):
        job_id = await _start_move_job(tx, ids, plan, now) if plan.moves_a_team else None
        events.append(_event(plan, history_id, now))
        attached.append(Attached(_view_of_new(plan, now), True, job_id))
    await publish(tx, USER_EVENTS, *events, shared=SHARED_FIELDS)
    return attached


async def _start_move_job(tx: Tx, ids: IdGenerator, plan: Plan, now: datetime) -> int:
    job_id = ids.next_id()
    old_ids, new_ids = paths.ids_of(plan.old_path), paths.ids_of(plan.new_path)
    await (await tx.main()).execute(
        move_jobs.insert(),
        [
            {
                "id": job_id,
                "user_id": plan.user_id,
                "old_prefix": plan.old_path,
                "new_prefix": plan.new_path,
                "level_delta": len(new_ids) - len(old_ids),
                "new_root_id": new_ids[0],
                "old_ancestor_ids": json.dumps(ancestors_of(plan.old_path, len(plan.old_path))),
                "new_ancestor_ids": json.dumps(ancestors_of(plan.new_path, len(plan.new_path))),
                "status": RUNNING,
                "rows_done": 0,
                "reason": plan.reason,
                "created_at": now,
                "updated_at": now,
                "finished_at": None,
            }
        ],
    )
    return job_id


def _view_of_new(plan: Plan, now: datetime) -> dict[str, Any]:
    """The API view of the relation a plan writes, from what the plan already knows (its
    level; its path shown with decimal ids as the parent's, converted once, and its own id)."""
    return relation_view(
        plan.user_id,
        plan.row,
        plan.new_path,
        now,
        level=plan.row["level"],
        shown_path=paths.decimal_child_path(plan.parent_path, plan.user_id),
    )


def _parent_part(path: str) -> str:
    """A stored path without its last id: the ancestors' path (``,`` for a root)."""
    return path[: path.rfind(",", 0, len(path) - 1) + 1]


def event_data(plan: Plan, now: datetime) -> dict[str, Any]:
    """The ``UserBound`` data of a change (version 2), JSON-ready. The ancestors go as
    compact paths, as stored: a thousand ids as decimal strings cost a deep bind 21 KB more
    to write and the time to convert them (docs/decisions/0108-bind-event-ancestor-path.md).
    Built by hand, without validating a 14 KB path per bind (``tests/user/test_bind_batches.py``
    checks it equals the pydantic form)."""
    current = plan.current
    return {
        "user_id": str(plan.user_id),
        "parent_id": str(plan.parent_id),
        "previous_parent_id": str(current["parent_id"]) if current else None,
        "level": plan.row["level"],
        "bind_source": plan.row["bind_source"],
        "bound_at": now.isoformat(),
        "ancestor_path": plan.parent_path,
        # Whole-team counts follow stored paths: a running move job counts the rows it
        # rewrites, so a row that changes before the job reaches it leaves the ancestors of
        # its stored path (docs/decisions/0103-team-counts.md).
        "previous_ancestor_path": _parent_part(current["path"]) if current else None,
    }


def _event(plan: Plan, history_id: int, now: datetime) -> Envelope:
    return make_event(
        plan.event_type,
        history_id,
        key=plan.user_id,
        data=event_data(plan, now),
        source="user",
        version=USER_BOUND_VERSION,
    )
