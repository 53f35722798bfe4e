"""Admin move of a user to a new parent, and the resumable background job that rewrites the
paths, levels and roots of the user's subtree in batches (ARCHITECTURE §4).

The job's state lives in ``move_jobs``: every batch rewrites up to ``batch_size`` rows whose
path still starts with the old prefix, guarded on the path it read, and adds them to
``rows_done`` in the same transaction; rewritten rows no longer match, so a restart simply
carries on. Until the job is done, readers apply the pending rewrite to the paths they read
(``relations.effective_path``), so ancestors and cycle checks are right at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from sqlalchemy import bindparam, select, update

from libs.common.db.engine import Database, Tx
from libs.common.db.sql import upsert_add
from libs.common.errors import NotFound
from libs.common.ids import SHARD_COUNT, IdGenerator, shard_of
from libs.common.messaging.outbox import utcnow
from services.user.binding import Attached, attach
from services.user.models import PATH_HEAD_LENGTH, move_jobs, path_head, relations, team_counts
from services.user.relations import (
    RUNNING,
    active_rewrites,
    effective_path,
    load_relation,
    relation_view,
)
from services.user.users import require_user

log = logging.getLogger("tuike.user.moves")
DONE = "done"


async def move_user(
    tx: Tx, ids: IdGenerator, user_id: int, parent_id: int, reason: str
) -> Attached:
    """Move a user (and its team) under ``parent_id``; refused with ``relation.cycle`` if the
    parent is in the user's team. Moving under the current parent changes nothing."""
    await require_user(await tx.shard(shard_of(user_id)), user_id)
    await require_user(await tx.shard(shard_of(parent_id)), parent_id)
    current = await load_relation(await tx.shard(shard_of(user_id)), user_id)
    if current is not None and current["parent_id"] == parent_id and current["expires_at"] is None:
        path = effective_path(user_id, current, await active_rewrites(await tx.main()))
        return Attached(relation_view(user_id, current, path, utcnow()), False)
    return await attach(
        tx,
        ids,
        user_id,
        parent_id,
        source="admin",
        kind="move",
        reason=reason,
        event_type="user.moved",
        current=current,
    )


def _upper_bound(prefix: str) -> str:
    # Paths end with ',' (0x2C); every path under the prefix sorts below prefix[:-1] + '-'
    # (0x2D), so the subtree is an index range scan on SQLite and MySQL alike.
    return prefix[:-1] + "-"


async def run_move_batch(db: Database, batch_size: int = 500) -> bool:
    """One batch of the oldest running move job; False when there was nothing to do."""

    async def work(tx: Tx) -> bool:
        main = await tx.main()
        job = (
            (
                await main.execute(
                    select(move_jobs)
                    .where(move_jobs.c.status == RUNNING)
                    .order_by(move_jobs.c.id)
                    .limit(1)
                )
            )
            .mappings()
            .first()
        )
        if job is None:
            return False
        old_prefix, new_prefix = job["old_prefix"], job["new_prefix"]
        upper = _upper_bound(old_prefix)
        rewritten = 0
        for shard in range(SHARD_COUNT):
            if rewritten >= batch_size:
                break
            conn = await tx.shard(shard)
            table = relations.for_shard(shard)
            rows = (
                await conn.execute(
                    select(table.c.user_id, table.c.path, table.c.level)
                    .where(
                        # The indexed head narrows the scan (SQLite), the whole path decides.
                        path_head(table.c.path) >= old_prefix[:PATH_HEAD_LENGTH],
                        path_head(table.c.path) <= upper[:PATH_HEAD_LENGTH],
                        table.c.path >= old_prefix,
                        table.c.path < upper,
                        # A row written after the job began has its new path already.
                        table.c.bound_at < job["created_at"],
                    )
                    .limit(batch_size - rewritten)
                )
            ).all()
            if not rows:
                continue
            result = await conn.execute(
                update(table)
                .where(
                    table.c.user_id == bindparam("key"),
                    table.c.path == bindparam("old"),
                    table.c.bound_at < job["created_at"],
                )
                .values(
                    path=bindparam("new"),
                    level=bindparam("new_level"),
                    root_id=bindparam("root"),
                ),
                [
                    {
                        "key": row.user_id,
                        "old": row.path,
                        "new": new_prefix + row.path[len(old_prefix) :],
                        "new_level": row.level + job["level_delta"],
                        "root": job["new_root_id"],
                    }
                    for row in rows
                ],
            )
            rewritten += max(int(result.rowcount or 0), 0)
            if result.rowcount is None or result.rowcount < 0:  # pragma: no cover
                rewritten += len(rows)
        now = utcnow()
        if rewritten:
            await main.execute(
                update(move_jobs)
                .where(move_jobs.c.id == job["id"], move_jobs.c.status == RUNNING)
                .values(rows_done=move_jobs.c.rows_done + rewritten, updated_at=now)
            )
            return True
        finished = await main.execute(
            update(move_jobs)
            .where(move_jobs.c.id == job["id"], move_jobs.c.status == RUNNING)
            .values(status=DONE, updated_at=now, finished_at=now)
        )
        if finished.rowcount == 1:
            await _shift_team_sizes(tx, job)
        return True

    return await db.run(work)


async def _shift_team_sizes(tx: Tx, job: Any) -> None:
    """The moved user's descendants leave the old ancestors' teams and join the new ones'
    (the user itself is counted by the consumer of its user.moved / user.rebound event)."""
    count = int(job["rows_done"])
    if not count:
        return
    deltas: dict[int, int] = {}
    for ancestor in json.loads(job["old_ancestor_ids"]):
        deltas[ancestor] = deltas.get(ancestor, 0) - count
    for ancestor in json.loads(job["new_ancestor_ids"]):
        deltas[ancestor] = deltas.get(ancestor, 0) + count
    await add_team_sizes(tx, deltas)


async def add_team_sizes(tx: Tx, deltas: dict[int, int]) -> None:
    """Add to whole-team counts: one upsert per shard, ids sorted (a fixed lock order)."""
    by_shard: dict[int, list[dict[str, int]]] = {}
    for user_id in sorted(deltas):
        if deltas[user_id]:
            by_shard.setdefault(shard_of(user_id), []).append(
                {
                    "user_id": user_id,
                    "level1_count": 0,
                    "level2_count": 0,
                    "level3_count": 0,
                    "team_size": deltas[user_id],
                }
            )
    for shard, rows in sorted(by_shard.items()):
        await upsert_add(
            await tx.shard(shard), team_counts.for_shard(shard), rows, ["user_id"], ["team_size"]
        )


async def get_move_job(db: Database, job_id: int) -> dict[str, Any]:
    async with db.read(may_lag=False) as main:
        row = (
            (await main.execute(select(move_jobs).where(move_jobs.c.id == job_id)))
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound(f"no move job {job_id}", code="relation.move_not_found")
    return dict(row)


async def move_worker(db: Database, stop: asyncio.Event, idle_seconds: float = 0.5) -> None:
    """Background task: run move batches while there are any; idle otherwise."""
    while not stop.is_set():
        try:
            busy = await run_move_batch(db)
        except Exception:
            log.exception("move batch failed; retrying")
            busy = False
        if not busy:
            try:
                await asyncio.wait_for(stop.wait(), timeout=idle_seconds)
            except TimeoutError:
                pass
