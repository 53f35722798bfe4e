"""Leaderboards: one Redis sorted set per (metric, period, period key), member = promoter id,
score = the promoter's total for the period. Applied events add their deltas after the
commit; :func:`rebuild` recomputes a board from ``promoter_stats`` (the table is the truth,
the board a view that a crash between commit and Redis could leave behind)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import func, select

from libs.common.db.engine import Database
from libs.common.errors import BadRequest
from libs.common.ids import SHARD_COUNT
from libs.common.metrics import REDIS_FAILURES
from services.stats.models import promoter_stats
from services.stats.service import Figures, StatsStores

log = logging.getLogger("tuike.stats.leaderboard")

# metric name in the API → the figure it ranks by
METRICS = {
    "commission": "commission_amount",
    "new_customers": "new_customers",
    "order_amount": "order_amount",
}
PERIODS = ("day", "week", "month")
# How long a board outlives its period (then Redis forgets it; rebuild brings it back).
_KEEP_DAYS = {"day": 40, "week": 120, "month": 400}
MAX_LIMIT = 500


def check_metric_period(metric: str, period: str) -> None:
    if metric not in METRICS:
        raise BadRequest(
            f"unknown metric {metric!r}",
            code="stats.bad_metric",
            details={"allowed": sorted(METRICS)},
        )
    if period not in PERIODS:
        raise BadRequest(
            f"unknown period {period!r}", code="stats.bad_period", details={"allowed": PERIODS}
        )


def period_range(day: date, period: str) -> tuple[date, date]:
    """First and last day of the period holding ``day`` (weeks start on Monday, ISO)."""
    if period == "day":
        return day, day
    if period == "week":
        first = day - timedelta(days=day.weekday())
        return first, first + timedelta(days=6)
    first = day.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return first, following - timedelta(days=1)


def period_key(day: date, period: str) -> str:
    if period == "day":
        return day.strftime("%Y%m%d")
    if period == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    return day.strftime("%Y%m")


def board_key(stores: StatsStores, metric: str, period: str, day: date) -> str:
    return f"{stores.key_prefix}stats:lb:{metric}:{period}:{period_key(day, period)}"


# One call per batch: KEYS are boards; ARGV holds, per key, its TTL in seconds and a count n,
# then n pairs of (member, increment).
_ADD_DELTAS = """
local at = 1
for i, key in ipairs(KEYS) do
  local ttl = ARGV[at]
  local n = tonumber(ARGV[at + 1])
  at = at + 2
  for _ = 1, n do
    redis.call('zincrby', key, ARGV[at + 1], ARGV[at])
    at = at + 2
  end
  redis.call('expire', key, ttl)
end
return 0
"""


async def add_deltas(stores: StatsStores, rows: dict[tuple[int, date], Figures]) -> None:
    """Add committed changes to every board they belong to (run after the commit).

    The changes are summed per (board, promoter) first and sent in one script call: a batch
    of events costs one round trip. (On Redis Cluster the boards of a batch would need one
    hash slot; the embedded and single-node setups have one.)
    """
    boards: dict[str, dict[str, int]] = {}
    ttls: dict[str, int] = {}
    for (promoter_id, day), figures in rows.items():
        values = figures.as_dict()
        for metric, figure in METRICS.items():
            delta = values[figure]
            if not delta:
                continue
            for period in PERIODS:
                key = board_key(stores, metric, period, day)
                members = boards.setdefault(key, {})
                members[str(promoter_id)] = members.get(str(promoter_id), 0) + delta
                ttls[key] = max(ttls.get(key, 0), _expire_seconds(day, period))
    if not boards:
        return
    keys = list(boards)
    arguments: list[str | int] = []
    for key in keys:
        changes = [(member, delta) for member, delta in boards[key].items() if delta]
        arguments.extend((ttls[key], len(changes)))
        for member, delta in changes:
            arguments.extend((member, delta))
    try:
        await stores.redis.eval(_ADD_DELTAS, len(keys), *keys, *arguments)
    except RedisError:
        # The table has the change; `python -m services.stats.rebuild` repairs the board.
        REDIS_FAILURES.labels("leaderboard").inc()
        log.warning("leaderboard update failed for %d rows", len(rows))


def _expire_seconds(day: date, period: str) -> int:
    _, last = period_range(day, period)
    return ((last - day).days + _KEEP_DAYS[period]) * 86400


@dataclass
class Ranked:
    rank: int  # 1 = first
    promoter_id: int
    value: int


async def top(stores: StatsStores, metric: str, period: str, day: date, limit: int) -> list[Ranked]:
    """The first ``limit`` promoters, highest value first (ties: larger id first)."""
    entries: Any = await stores.redis.zrevrange(
        board_key(stores, metric, period, day), 0, limit - 1, withscores=True
    )
    return [
        Ranked(rank=index + 1, promoter_id=int(member), value=int(score))
        for index, (member, score) in enumerate(entries)
    ]


async def rank_of(
    stores: StatsStores, metric: str, period: str, day: date, promoter_id: int
) -> Ranked | None:
    """The promoter's place on the board, or None when it has no entry for the period."""
    key = board_key(stores, metric, period, day)
    async with stores.redis.pipeline(transaction=False) as pipe:
        pipe.zrevrank(key, str(promoter_id))
        pipe.zscore(key, str(promoter_id))
        rank, score = await pipe.execute()
    if rank is None or score is None:
        return None
    return Ranked(rank=int(rank) + 1, promoter_id=promoter_id, value=int(score))


async def period_totals(db: Database, figure: str, first: date, last: date) -> dict[int, int]:
    """Every promoter's total of ``figure`` over [first, last], from all shards."""
    totals: dict[int, int] = {}
    for shard in range(SHARD_COUNT):
        table = promoter_stats.for_shard(shard)
        async with db.read_shard(shard) as conn:
            rows = await conn.execute(
                select(table.c.promoter_id, func.sum(table.c[figure]))
                .where(table.c.day >= first, table.c.day <= last)
                .group_by(table.c.promoter_id)
            )
            for promoter_id, total in rows:
                if total:
                    totals[int(promoter_id)] = int(total)
    return totals


async def rebuild(db: Database, stores: StatsStores, metric: str, period: str, day: date) -> int:
    """Replace one board by the totals in the table; returns how many promoters it ranks.

    The new board is written under a temporary key and renamed over the old one, so readers
    see the old board or the new one, never a half-built one. Increments that land between
    the table read and the rename are lost to the board (not to the table): rebuild when
    the stream is quiet, or run it again.
    """
    check_metric_period(metric, period)
    first, last = period_range(day, period)
    totals = await period_totals(db, METRICS[metric], first, last)
    key = board_key(stores, metric, period, day)
    if not totals:
        await stores.redis.delete(key)
        return 0
    temporary = f"{key}:rebuild:{secrets.token_hex(4)}"
    for chunk in _chunks(totals.items(), 10_000):
        await stores.redis.zadd(temporary, {str(p): v for p, v in chunk})
    async with stores.redis.pipeline(transaction=True) as pipe:
        pipe.rename(temporary, key)
        pipe.expire(key, _expire_seconds(day, period))
        await pipe.execute()
    return len(totals)


def _chunks(items: Iterable[tuple[int, int]], size: int) -> Iterable[list[tuple[int, int]]]:
    chunk: list[tuple[int, int]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
