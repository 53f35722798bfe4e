"""Team stats: each fact (an order of a buyer, a bind of a user, a commission earned by a
promoter) also counts for the ancestors of the user it happened to: for the parent as
"level1", the grandparent as "level2", and every ancestor as "team".

The chain of a fact is the one its event carried (a bind's ancestor_ids, an order's
beneficiaries: the tree as it was then), continued past its end, or found when the event
carried none (a commission), from the relation projection at the time the batch runs.

The fan-out runs off the hot path: the consumer only queues the fact (``team_queue``, in its
own transaction, so exactly once); :func:`apply_team_queue` later takes a batch, finds the
ancestors in the relation projection (``team_members``, kept from user.events), sums the
changes per (ancestor, day, scope) and writes them with the batch's queue rows deleted in the
same transaction: a fact reaches its ancestors once, at a cost that does not grow per
request with the depth of the tree.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.engine import Database, Tx
from libs.common.db.sql import insert_ignore, upsert_add
from libs.common.ids import shard_of
from libs.common.messaging.outbox import utcnow
from services.stats.models import FIGURES, promoter_team_stats, team_members, team_queue
from services.stats.service import Figures

log = logging.getLogger("tuike.stats.team")


def path_of(user_id: int, ancestors_nearest_first: Sequence[int]) -> str:
    """``,root,...,parent,user,`` as the user service writes paths."""
    ordered = [*reversed(ancestors_nearest_first), user_id]
    return "," + ",".join(str(n) for n in ordered) + ","


def ancestors_in(path: str, user_id: int) -> list[int]:
    """The ancestors in ``path``, nearest first (the user itself left out)."""
    ids = [int(part) for part in path.strip(",").split(",") if part]
    return [n for n in reversed(ids) if n != user_id]


def member_row(user_id: int, path: str) -> dict[str, Any]:
    """A new ``team_members`` row: the root is the path's first id."""
    return {
        "user_id": user_id,
        "root_id": int(path.strip(",").split(",")[0]),
        "path": path,
        "updated_at": utcnow(),
    }


async def move_in_projection(
    conn: AsyncConnection, user_id: int, ancestors_nearest_first: Sequence[int]
) -> None:
    """Record the user's place in the tree; when it moved (rebind, admin move), its
    subtree moves with it: the descendants' paths get the new prefix. Moves are rare, so
    this prefix scan (narrowed by the old root) is the only subtree scan, as §4 allows."""
    new_path = path_of(user_id, ancestors_nearest_first)
    new_root = int(new_path.strip(",").split(",")[0])
    now = utcnow()
    old = (
        await conn.execute(
            select(team_members.c.path, team_members.c.root_id).where(
                team_members.c.user_id == user_id
            )
        )
    ).first()
    if old is None:
        await insert_ignore(conn, team_members, [member_row(user_id, new_path)])
        return
    old_path, old_root = old
    if old_path == new_path:
        return
    await conn.execute(
        update(team_members)
        .where(team_members.c.user_id == user_id)
        .values(path=new_path, root_id=new_root, updated_at=now)
    )
    descendants = (
        await conn.execute(
            select(team_members.c.user_id, team_members.c.path).where(
                team_members.c.root_id == old_root,
                team_members.c.path.startswith(old_path, autoescape=True),
                team_members.c.user_id != user_id,
            )
        )
    ).all()
    for descendant_id, path in descendants:
        await conn.execute(
            update(team_members)
            .where(team_members.c.user_id == descendant_id)
            .values(path=new_path + path[len(old_path) :], root_id=new_root, updated_at=now)
        )


class _TakenByAnother(Exception):
    """Another worker deleted some of these queue rows first: it applies them."""


async def apply_team_queue(db: Database, batch_size: int = 500) -> tuple[int, set[int]]:
    """Carry one batch of queued facts to the ancestors. Returns (facts applied, ancestors
    whose team rows changed)."""
    async with db.read(may_lag=False) as conn:
        facts = (
            (await conn.execute(select(team_queue).order_by(team_queue.c.id).limit(batch_size)))
            .mappings()
            .all()
        )
        if not facts:
            return 0, set()
        hints = {
            int(f["id"]): [int(a) for a in str(f["ancestor_ids"] or "").split(",") if a]
            for f in facts
        }
        # Where each chain continues from the projection: past the event's own chain, or
        # from the user when the event carried none.
        starts = {
            int(f["id"]): hints[int(f["id"])][-1] if hints[int(f["id"])] else int(f["user_id"])
            for f in facts
        }
        paths = {
            int(user_id): path
            for user_id, path in await conn.execute(
                select(team_members.c.user_id, team_members.c.path).where(
                    team_members.c.user_id.in_(sorted(set(starts.values())))
                )
            )
        }
    sums: dict[tuple[int, date, str], Figures] = {}
    for fact in facts:
        fact_id = int(fact["id"])
        start = starts[fact_id]
        ancestors = list(hints[fact_id])
        if start in paths:
            seen = {*ancestors, int(fact["user_id"])}
            ancestors.extend(a for a in ancestors_in(paths[start], start) if a not in seen)
        changes = {name: int(fact[name]) for name in FIGURES}
        for distance, ancestor in enumerate(ancestors, start=1):
            scopes = ["team"]
            if distance <= 2:
                scopes.append(f"level{distance}")
            for scope in scopes:
                sums.setdefault((ancestor, fact["day"], scope), Figures()).add(changes)
    ids = [int(f["id"]) for f in facts]
    by_shard: dict[int, list[dict[str, Any]]] = {}
    for (ancestor, day, scope), figures in sums.items():
        if not figures.is_zero():
            by_shard.setdefault(shard_of(ancestor), []).append(
                {"promoter_id": ancestor, "day": day, "scope": scope, **figures.as_dict()}
            )

    async def work(tx: Tx) -> None:
        deleted = await (await tx.main()).execute(
            delete(team_queue).where(team_queue.c.id.in_(ids))
        )
        if int(deleted.rowcount or 0) != len(ids):
            raise _TakenByAnother()
        for shard, rows in sorted(by_shard.items()):
            await upsert_add(
                await tx.shard(shard),
                promoter_team_stats.for_shard(shard),
                rows,
                ["promoter_id", "day", "scope"],
                FIGURES,
            )

    try:
        await db.run(work)
    except _TakenByAnother:
        return 0, set()
    return len(ids), {ancestor for ancestor, _, _ in sums}


async def team_queue_size(db: Database) -> int:
    """Facts still waiting for the fan-out (the team stats' lag, as a metric)."""
    async with db.read(may_lag=False) as conn:
        return int(await conn.scalar(select(func.count()).select_from(team_queue)) or 0)


async def drain_team_queue(db: Database, batch_size: int = 500) -> int:
    """Apply every queued fact (tests, the bench, the rebuild command)."""
    total = 0
    while True:
        applied, _ = await apply_team_queue(db, batch_size)
        if not applied:
            async with db.read(may_lag=False) as conn:
                left = (await conn.execute(select(team_queue.c.id).limit(1))).first()
            if left is None:
                return total
            await asyncio.sleep(0.05)
        total += applied
