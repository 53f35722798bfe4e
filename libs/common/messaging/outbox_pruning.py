"""Pruning the outbox: published rows are deleted once they are older than the republish
horizon can reach back, and the big values stored apart (``outbox_part``) once no event has
taken them for as long (docs/decisions/0806-outbox-pruning.md).

A part is never deleted while a row that names it may still be read:
- every row that names a part was written at most ``2 * PART_USE_REFRESH`` after the part's
  ``used_at`` (a process writes a part again, moving ``used_at`` forward, once it has
  remembered it for ``PART_USE_REFRESH``; the write itself moves it if it is older than that);
- so parts are deleted only when ``used_at`` is more than that, plus a margin for clocks,
  before the rows' cut-off, and before the oldest row still waiting to be published.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select

from libs.common.db.engine import Database, Tx
from libs.common.messaging.outbox import (
    NOT_PUBLISHED,
    PART_USE_REFRESH,
    outbox,
    outbox_part,
    unpublished,
    utcnow,
)
from libs.common.settings import ServiceSettings

log = logging.getLogger("tuike.outbox")

# Rows deleted per transaction: short transactions, so writers barely wait.
PRUNE_BATCH = 1000
# Room for clocks of different hosts and transactions that take long, on top of the rule.
_MARGIN = timedelta(hours=1)


@dataclass(frozen=True)
class Pruned:
    rows: int
    parts: int


def keep_published(settings: ServiceSettings) -> timedelta:
    """How long a published row is kept: the setting, never less than the republish horizon
    (a republish must find every row it reaches back to)."""
    return timedelta(
        seconds=max(
            settings.outbox_keep_published_seconds, settings.outbox_republish_horizon_seconds
        )
    )


async def prune_outbox(db: Database, keep: timedelta, now: datetime | None = None) -> Pruned:
    """Delete rows published before ``now - keep``, then the parts that no row can name any
    more; a batch per transaction. Rows not yet published are never deleted."""
    now = now or utcnow()
    row_cutoff = now - keep
    rows = await _in_batches(db, lambda tx: _delete_published_rows(tx, row_cutoff))
    async with db.read(may_lag=False) as conn:
        oldest_waiting = await conn.scalar(
            select(func.min(outbox.c.created_at)).where(unpublished())
        )
    part_cutoff = row_cutoff - 2 * PART_USE_REFRESH - _MARGIN
    if oldest_waiting is not None:
        part_cutoff = min(part_cutoff, oldest_waiting - 2 * PART_USE_REFRESH - _MARGIN)
    parts = await _in_batches(db, lambda tx: _delete_unused_parts(tx, part_cutoff))
    if rows or parts:
        log.info("outbox pruned: %d published rows, %d parts", rows, parts)
    return Pruned(rows, parts)


async def _in_batches(db: Database, delete_batch: Callable[[Tx], Awaitable[int]]) -> int:
    """Run ``delete_batch`` (up to ``PRUNE_BATCH`` rows), a transaction each, until a batch
    comes back short; the rows deleted in all."""
    total = 0
    while True:
        done = await db.run(delete_batch)
        total += done
        if done < PRUNE_BATCH:
            return total


async def _delete_published_rows(tx: Tx, cutoff: datetime) -> int:
    conn = await tx.main()
    # In the order of the (published_at, seq) index; the IN list, because MariaDB takes no
    # LIMIT in a subquery of IN.
    seqs = (
        await conn.scalars(
            select(outbox.c.seq)
            .where(outbox.c.published_at > NOT_PUBLISHED, outbox.c.published_at < cutoff)
            .order_by(outbox.c.published_at, outbox.c.seq)
            .limit(PRUNE_BATCH)
        )
    ).all()
    if seqs:
        await conn.execute(delete(outbox).where(outbox.c.seq.in_(seqs)))
    return len(seqs)


async def _delete_unused_parts(tx: Tx, cutoff: datetime) -> int:
    conn = await tx.main()
    last_use = func.coalesce(outbox_part.c.used_at, outbox_part.c.created_at)
    digests = (
        await conn.scalars(select(outbox_part.c.digest).where(last_use < cutoff).limit(PRUNE_BATCH))
    ).all()
    if digests:
        # Checked again in the delete: an event may have taken the part since the select.
        await conn.execute(
            delete(outbox_part).where(outbox_part.c.digest.in_(digests), last_use < cutoff)
        )
    return len(digests)
