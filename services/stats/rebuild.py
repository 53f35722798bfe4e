"""``python -m services.stats.rebuild [--metric M] [--period P] [--day YYYY-MM-DD]``:
rebuild leaderboards from ``promoter_stats`` (the table is the truth; boards are views).

Defaults: every metric and period holding today. Reads the service's deploy settings from
the environment (``TUIKE_DATABASE_URL``, ``TUIKE_REDIS_URL``, ``TUIKE_REDIS_KEY_PREFIX``,
``TUIKE_SHARD_MAP``, ``TUIKE_TIMEZONE``), as the service does.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import date

from libs.common.db.engine import Database
from libs.common.redis import Cache, connect
from libs.common.settings import ServiceSettings
from services.stats import leaderboard
from services.stats.service import StatsStores


async def rebuild_boards(
    db: Database, stores: StatsStores, metrics: list[str], periods: list[str], day: date
) -> list[tuple[str, str, str, int]]:
    """Rebuild each (metric, period) board holding ``day``; returns (metric, period, period
    key, promoters ranked) per board."""
    done = []
    for metric in metrics:
        for period in periods:
            ranked = await leaderboard.rebuild(db, stores, metric, period, day)
            done.append((metric, period, leaderboard.period_key(day, period), ranked))
    return done


async def _run(args: argparse.Namespace) -> int:
    settings = ServiceSettings(service_name="stats")
    db = Database(settings.database_url, settings.replica_url, settings.shard_map)
    redis = connect(settings.redis_url)
    stores = StatsStores(
        redis,
        Cache(redis, f"{settings.redis_key_prefix}stats:"),
        settings.redis_key_prefix,
        settings.zone,
    )
    try:
        day = args.day or stores.today()
        metrics = list(leaderboard.METRICS) if args.metric == "all" else [args.metric]
        periods = list(leaderboard.PERIODS) if args.period == "all" else [args.period]
        for metric, period, key, ranked in await rebuild_boards(db, stores, metrics, periods, day):
            print(f"rebuilt {metric} {period} {key}: {ranked} promoters")
    finally:
        await redis.aclose()
        await db.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stats.rebuild")
    parser.add_argument("--metric", default="all", choices=["all", *leaderboard.METRICS])
    parser.add_argument("--period", default="all", choices=["all", *leaderboard.PERIODS])
    parser.add_argument("--day", type=date.fromisoformat, default=None, help="YYYY-MM-DD")
    return asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
