"""Stats benchmark: events applied per second (as the consumer applies them, in micro-batches
of 500, and one per transaction as the baseline), the team fan-out, the summary read p99
cached and uncached, and leaderboard top-100 / my-rank p99 over 1,000,000 promoters.

SQLite in a temporary directory and an embedded redis-server by default;
TUIKE_BENCH_MYSQL_URL (a server URL, a database is created) and TUIKE_BENCH_REDIS_URL use
real ones. TUIKE_BENCH_EVENTS (default 20000) and TUIKE_BENCH_BOARD_SIZE (default 1000000)
bound the run time.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from deploy.local.stack import free_port, redis_server_binary, wait_port
from libs.common import relation_path
from libs.common.db.engine import Database
from libs.common.db.migrations import migrate
from libs.common.events import (
    Beneficiary,
    CommissionLine,
    CommissionsChanged,
    OrderData,
    OrderItemData,
    UserBound,
)
from libs.common.ids import IdGenerator
from libs.common.messaging.envelope import Envelope, make_event
from libs.common.redis import Cache
from services.stats import leaderboard, reads
from services.stats.consumers import consume
from services.stats.ingest import summary_cache_key
from services.stats.migrations import MIGRATIONS
from services.stats.service import StatsStores
from services.stats.team import drain_team_queue

ZONE = ZoneInfo("Asia/Shanghai")


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


async def _timed(calls: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    return samples


def _events(count: int, promoters: list[int], ids: IdGenerator) -> list[Envelope]:
    """A mix like a day of traffic: binds, paid orders and their commission accruals."""
    rng = random.Random(7)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    events: list[Envelope] = []
    while len(events) < count:
        when = start + timedelta(seconds=rng.randrange(30 * 86400))
        promoter, upline = rng.sample(promoters, 2)
        buyer, order = ids.next_id(), ids.next_id()
        bound = UserBound(
            user_id=buyer,
            parent_id=promoter,
            ancestor_path=relation_path.path_of([upline, promoter]),
            level=3,
            bind_source="link",
            bound_at=when,
        )
        events.append(
            make_event(
                "user.bound",
                buyer,
                key=buyer,
                data=bound.model_dump(mode="json", exclude_defaults=True),
                source="user",
                version=2,
            )
        )
        amount = rng.randrange(100, 100_000)
        order_data = OrderData(
            order_id=order,
            platform="default",
            order_no=str(order),
            buyer_user_id=buyer,
            currency="CNY",
            promoter_id=promoter,
            beneficiaries=[
                Beneficiary(level=1, user_id=promoter),
                Beneficiary(level=2, user_id=upline),
            ],
            attribution_status="resolved",
            items=[
                OrderItemData(
                    item_id=order + 1,
                    sku="S",
                    category="c",
                    quantity=1,
                    unit_price_amount=amount,
                    paid_amount=amount,
                )
            ],
            shipping_amount=0,
            status="paid",
            created_at=when,
            paid_at=when,
        )
        events.append(
            make_event(
                "order.paid",
                order,
                key=order,
                data=order_data.model_dump(mode="json"),
                source="order",
            )
        )
        lines = [
            CommissionLine(
                record_id=order * 10 + level,
                order_id=order,
                item_id=order + 1,
                level=level,
                beneficiary_id=who,
                amount=amount * rate // 10000,
                currency="CNY",
            )
            for level, who, rate in ((1, promoter, 1000), (2, upline, 300))
        ]
        changed = CommissionsChanged(order_id=order, lines=lines, occurred_at=when)
        events.append(
            make_event(
                "commission.accrued",
                order,
                key=order,
                data=changed.model_dump(mode="json"),
                source="commission",
            )
        )
    return events[:count]


async def _database(workdir: Path) -> tuple[Database, Callable[[], Awaitable[None]]]:
    server = os.environ.get("TUIKE_BENCH_MYSQL_URL")
    if not server:
        db = Database(f"sqlite+aiosqlite:///{workdir / 'stats.db'}")
        return db, db.dispose
    name = f"tuike_bench_{secrets.token_hex(4)}"
    engine = create_async_engine(server.rstrip("/") + "/")
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE DATABASE `{name}`"))
    db = Database(f"{server.rstrip('/')}/{name}?charset=utf8mb4")

    async def drop() -> None:
        await db.dispose()
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP DATABASE `{name}`"))
        await engine.dispose()

    return db, drop


async def _run(redis_url: str, workdir: Path) -> None:
    event_count = int(os.environ.get("TUIKE_BENCH_EVENTS", "20000"))
    board_size = int(os.environ.get("TUIKE_BENCH_BOARD_SIZE", "1000000"))
    db, close_db = await _database(workdir)
    # A longer socket timeout than the services' 2 s: loading a million members on a busy
    # machine must not fail the run.
    redis: Redis = Redis.from_url(redis_url, socket_timeout=60)
    prefix = f"tuike-bench-{secrets.token_hex(4)}:"
    stores = StatsStores(redis, Cache(redis, f"{prefix}stats:"), prefix, ZONE)
    try:
        await migrate(db, MIGRATIONS)
        load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
        print(
            f"backend: {db.dialect}, redis {redis_url}; "
            f"load average {load} on {os.cpu_count()} CPUs"
        )
        ids = IdGenerator(1)
        promoters = [ids.next_id() for _ in range(1000)]

        baseline_events = _events(1000, promoters, ids)
        started = time.perf_counter()
        for event in baseline_events:
            await consume(db, stores, [event])
        single = len(baseline_events) / (time.perf_counter() - started)

        events = _events(event_count, promoters, ids)
        started = time.perf_counter()
        for start in range(0, len(events), 500):
            await consume(db, stores, events[start : start + 500])
        batched = len(events) / (time.perf_counter() - started)
        started = time.perf_counter()
        facts = await drain_team_queue(db)
        fan_out = facts / (time.perf_counter() - started)
        print(f"events applied: {batched:,.0f}/s in micro-batches of 500 ({len(events)} events)")
        print(f"  baseline, one event per transaction: {single:,.0f}/s (1000 events)")
        print(f"team fan-out: {fan_out:,.0f} facts/s to 2 ancestors each ({facts} facts)")

        today = stores.today()
        sample = random.Random(3).choices(promoters, k=1000)
        uncached = []
        for promoter in sample:
            t0 = time.perf_counter()
            await reads.load_summary(db, promoter, today)
            uncached.append(time.perf_counter() - t0)
        for promoter in set(sample):
            await reads.cached_summary(db, stores, promoter)
        cached = []
        for promoter in sample:
            t0 = time.perf_counter()
            await reads.cached_summary(db, stores, promoter)
            cached.append(time.perf_counter() - t0)
        assert await redis.exists(f"{prefix}stats:cache:{summary_cache_key(sample[0], today)}")
        print(f"summary read p99: cached {_p99(cached):.2f} ms, uncached {_p99(uncached):.2f} ms")

        day = today
        key = leaderboard.board_key(stores, "commission", "month", day)
        await redis.delete(key)
        rng = random.Random(11)
        members = [ids.next_id() for _ in range(board_size)]
        started = time.perf_counter()
        for start in range(0, board_size, 5_000):
            await redis.zadd(
                key, {str(m): rng.randrange(1, 10_000_000) for m in members[start : start + 5_000]}
            )
        load_seconds = time.perf_counter() - started
        size = await redis.zcard(key)
        ping = await _timed(1000, redis.ping)
        top = await _timed(1000, lambda: leaderboard.top(stores, "commission", "month", day, 100))
        picks = rng.choices(members, k=1000)
        mine = []
        for member in picks:
            t0 = time.perf_counter()
            ranked = await leaderboard.rank_of(stores, "commission", "month", day, member)
            mine.append(time.perf_counter() - t0)
            assert ranked is not None
        print(f"leaderboard of {size:,} promoters (loaded in {load_seconds:.1f}s):")
        print(f"  top-100 p99 {_p99(top):.2f} ms, my-rank p99 {_p99(mine):.2f} ms")
        print(f"  baseline, Redis PING p99 {_p99(ping):.2f} ms")
        await redis.delete(key)
    finally:
        keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        await close_db()


def main() -> None:
    with tempfile.TemporaryDirectory() as workdir:
        redis_url = os.environ.get("TUIKE_BENCH_REDIS_URL")
        process = None
        if not redis_url:
            port = free_port()
            process = subprocess.Popen(
                [
                    str(redis_server_binary()),
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    workdir,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            wait_port("127.0.0.1", port, 20, process)
            redis_url = f"redis://127.0.0.1:{port}/0"
        try:
            asyncio.run(_run(redis_url, Path(workdir)))
        finally:
            if process is not None:
                process.terminate()
                process.wait(10)


if __name__ == "__main__":
    main()
