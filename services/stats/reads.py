"""Reads of the stats: daily rows with gaps filled, the summary (cache-aside, invalidated
after each commit that changes the promoter), team figures and leaderboards."""

from __future__ import annotations

import asyncio
import logging
from datetime import date, timedelta
from typing import Any

import httpx
from redis.exceptions import RedisError
from sqlalchemy import case, func, select

from libs.common.db.engine import Database
from libs.common.errors import BadRequest, ServiceUnavailable
from libs.common.ids import shard_of
from services.stats import leaderboard
from services.stats.ingest import summary_cache_key
from services.stats.models import FIGURES, TEAM_SCOPES, promoter_stats, promoter_team_stats
from services.stats.service import Figures, StatsStores, days_between

log = logging.getLogger("tuike.stats.reads")

MAX_RANGE_DAYS = 366
DEFAULT_RANGE_DAYS = 30


def day_range(stores: StatsStores, first: date | None, last: date | None) -> tuple[date, date]:
    """The asked range: ``to`` defaults to today, ``from`` to 30 days before ``to``."""
    last = last or stores.today()
    first = first or last - timedelta(days=DEFAULT_RANGE_DAYS - 1)
    if first > last:
        raise BadRequest(
            "from is after to",
            code="stats.bad_range",
            details={"from": first.isoformat(), "to": last.isoformat()},
        )
    if (last - first).days + 1 > MAX_RANGE_DAYS:
        raise BadRequest(
            f"at most {MAX_RANGE_DAYS} days at a time",
            code="stats.range_too_long",
            details={"max_days": MAX_RANGE_DAYS},
        )
    return first, last


async def daily_view(
    db: Database, stores: StatsStores, promoter_id: int, first: date | None, last: date | None
) -> dict[str, Any]:
    """``GET /stats/promoters/{id}``: the asked range (checked), one row per day."""
    first, last = day_range(stores, first, last)
    return {
        "promoter_id": promoter_id,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "items": await daily_rows(db, promoter_id, first, last),
    }


async def team_view(
    db: Database, stores: StatsStores, promoter_id: int, first: date | None, last: date | None
) -> dict[str, Any]:
    """``GET /stats/promoters/{id}/team``: the asked range (checked), per day and scope."""
    first, last = day_range(stores, first, last)
    return await team_rows(db, promoter_id, first, last)


async def daily_rows(
    db: Database, promoter_id: int, first: date, last: date
) -> list[dict[str, Any]]:
    """One row per day of [first, last], zeros where nothing happened."""
    table = promoter_stats.for_id(promoter_id)
    async with db.read_shard(shard_of(promoter_id)) as conn:
        rows = await conn.execute(
            select(table.c.day, *(table.c[name] for name in FIGURES)).where(
                table.c.promoter_id == promoter_id, table.c.day >= first, table.c.day <= last
            )
        )
        found = {row[0]: Figures(*(int(v) for v in row[1:])) for row in rows}
    return [
        {"day": day.isoformat(), **found.get(day, Figures()).as_dict()}
        for day in days_between(first, last)
    ]


async def load_summary(db: Database, promoter_id: int, today: date) -> dict[str, Any]:
    """Today, yesterday, this month and all time (up to today) in one indexed read."""
    table = promoter_stats.for_id(promoter_id)
    periods = {
        "today": table.c.day == today,
        "yesterday": table.c.day == today - timedelta(days=1),
        "this_month": table.c.day >= today.replace(day=1),
        "all_time": table.c.day <= today,
    }
    columns = [
        func.coalesce(func.sum(case((condition, table.c[name]), else_=0)), 0)
        for condition in periods.values()
        for name in FIGURES
    ]
    async with db.read_shard(shard_of(promoter_id)) as conn:
        row = (
            await conn.execute(
                select(*columns).where(table.c.promoter_id == promoter_id, table.c.day <= today)
            )
        ).one()
    values = [int(v) for v in row]
    result: dict[str, Any] = {"promoter_id": promoter_id, "day": today.isoformat()}
    for index, period in enumerate(periods):
        chunk = values[index * len(FIGURES) : (index + 1) * len(FIGURES)]
        result[period] = dict(zip(FIGURES, chunk, strict=True))
    return result


async def cached_summary(db: Database, stores: StatsStores, promoter_id: int) -> dict[str, Any]:
    """The summary through the cache (cache-aside; a write invalidates it after commit)."""
    today = stores.today()
    return await stores.cache.get_or_load(
        summary_cache_key(promoter_id, today), lambda: load_summary(db, promoter_id, today)
    )


async def fetch_account(
    commission_service_url: str, headers: dict[str, str], promoter_id: int
) -> dict[str, Any] | None:
    """The promoter's balances from the commission service, or None if it cannot say now."""
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            response = await client.get(
                f"{commission_service_url.rstrip('/')}/api/v1/accounts/{promoter_id}",
                headers=headers,
            )
        if response.status_code != 200:
            log.warning("accounts of %s: HTTP %s", promoter_id, response.status_code)
            return None
        body = response.json()
        return body if isinstance(body, dict) else None
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("accounts of %s unavailable: %s", promoter_id, exc)
        return None


async def summary_with_balances(
    db: Database,
    stores: StatsStores,
    promoter_id: int,
    commission_service_url: str,
    headers: dict[str, str],
) -> dict[str, Any]:
    """The summary plus frozen/available from the commission service; those two are null
    when the commission service is down (the stats are still worth showing)."""
    summary, account = await asyncio.gather(
        cached_summary(db, stores, promoter_id),
        fetch_account(commission_service_url, headers, promoter_id),
    )
    result = dict(summary)
    result["frozen_amount"] = _amount(account, "frozen_amount")
    result["available_amount"] = _amount(account, "available_amount")
    result["currency"] = (account or {}).get("currency")
    return result


def _amount(account: dict[str, Any] | None, name: str) -> int | None:
    if account is None or account.get(name) is None:
        return None
    return int(account[name])


async def team_rows(db: Database, promoter_id: int, first: date, last: date) -> dict[str, Any]:
    """Team figures per day and scope (level1, level2, team), zeros filled, with totals."""
    table = promoter_team_stats.for_id(promoter_id)
    async with db.read_shard(shard_of(promoter_id)) as conn:
        rows = await conn.execute(
            select(table.c.day, table.c.scope, *(table.c[name] for name in FIGURES)).where(
                table.c.promoter_id == promoter_id, table.c.day >= first, table.c.day <= last
            )
        )
        found = {(row[0], row[1]): Figures(*(int(v) for v in row[2:])) for row in rows}
    totals = {scope: Figures() for scope in TEAM_SCOPES}
    items = []
    for day in days_between(first, last):
        item: dict[str, Any] = {"day": day.isoformat()}
        for scope in TEAM_SCOPES:
            figures = found.get((day, scope), Figures())
            totals[scope].add(figures)
            item[scope] = figures.as_dict()
        items.append(item)
    return {
        "promoter_id": promoter_id,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "totals": {scope: figures.as_dict() for scope, figures in totals.items()},
        "items": items,
    }


async def leaderboard_view(
    stores: StatsStores,
    metric: str,
    period: str,
    day: date | None,
    limit: int,
    promoter_id: int | None,
) -> dict[str, Any]:
    """Top ``limit`` of one board and, when asked, the promoter's own place."""
    leaderboard.check_metric_period(metric, period)
    if not 1 <= limit <= leaderboard.MAX_LIMIT:
        raise BadRequest(
            f"limit must be between 1 and {leaderboard.MAX_LIMIT}",
            code="stats.bad_limit",
        )
    day = day or stores.today()
    first, last = leaderboard.period_range(day, period)
    try:
        top = await leaderboard.top(stores, metric, period, day, limit)
        mine = (
            await leaderboard.rank_of(stores, metric, period, day, promoter_id)
            if promoter_id is not None
            else None
        )
    except RedisError as exc:
        raise ServiceUnavailable(
            "the leaderboard is unavailable right now", code="stats.leaderboard_unavailable"
        ) from exc
    return {
        "metric": metric,
        "period": period,
        "period_key": leaderboard.period_key(day, period),
        "from": first.isoformat(),
        "to": last.isoformat(),
        "items": [vars(entry) for entry in top],
        "me": _me(mine, promoter_id),
    }


def _me(mine: leaderboard.Ranked | None, promoter_id: int | None) -> dict[str, Any] | None:
    if promoter_id is None:
        return None
    if mine is None:  # nothing counted for the period yet: not on the board
        return {"rank": None, "promoter_id": promoter_id, "value": 0}
    return vars(mine)
