"""Whatever order the events arrive in, however the consumer batches them and however often
the broker redelivers them, the daily figures equal a plain sum worked out from the facts."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from libs.common.db.engine import Database
from libs.common.db.migrations import migrate
from libs.common.messaging.envelope import Envelope
from libs.common.redis import Cache, connect
from services.stats import reads
from services.stats.consumers import consume
from services.stats.migrations import MIGRATIONS
from services.stats.models import FIGURES
from services.stats.service import StatsStores
from tests.stats.conftest import SHANGHAI, at, bound, commissions, new_id, paid, refunded

FIRST_DAY = date(2026, 6, 1)
DAYS = 4


async def _mysql(server_url: str, statement: str) -> None:
    engine = create_async_engine(server_url.rstrip("/") + "/")
    async with engine.begin() as conn:
        await conn.execute(text(statement))
    await engine.dispose()


@pytest.fixture
def property_env(
    backend: Any, tmp_path: Path, redis_url: str, key_prefix: str
) -> Iterator[tuple[asyncio.AbstractEventLoop, Database, StatsStores]]:
    """One database for every example (each uses its own promoters), on a loop of our own:
    hypothesis drives the examples synchronously."""
    loop = asyncio.new_event_loop()
    name = None
    if backend.mysql_url is None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'property.db'}"
    else:
        name = f"tuike_s{secrets.token_hex(4)}"
        url = f"{backend.mysql_url.rstrip('/')}/{name}?charset=utf8mb4"
        loop.run_until_complete(_mysql(backend.mysql_url, f"CREATE DATABASE `{name}`"))
    db = Database(url)
    loop.run_until_complete(migrate(db, MIGRATIONS))
    redis = connect(redis_url)
    stores = StatsStores(redis, Cache(redis, f"{key_prefix}stats:"), key_prefix, SHANGHAI)
    try:
        yield loop, db, stores
    finally:

        async def clean() -> None:
            keys = [key async for key in redis.scan_iter(match=f"{key_prefix}*")]
            if keys:
                await redis.delete(*keys)
            await redis.aclose()
            await db.dispose()

        loop.run_until_complete(clean())
        if name is not None:
            loop.run_until_complete(_mysql(backend.mysql_url, f"DROP DATABASE `{name}`"))
        loop.close()


day_offsets = st.integers(0, DAYS - 1)
orders = st.lists(
    st.tuples(
        st.integers(0, 2),  # promoter
        st.integers(1, 100_000),  # paid amount
        day_offsets,
        st.lists(st.tuples(st.integers(1, 100), st.integers(0, 2)), max_size=2),  # refunds
    ),
    max_size=5,
)
commission_changes = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(["accrued", "reversed", "settled"]),
        st.integers(1, 50_000),
        day_offsets,
    ),
    max_size=6,
)
binds = st.lists(st.tuples(st.integers(0, 2), day_offsets), max_size=4)


def _when(offset: int) -> Any:
    return at((FIRST_DAY + timedelta(days=offset)).isoformat(), "12:00")


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(orders, commission_changes, binds, st.randoms(use_true_random=False))
def test_figures_equal_the_sum_of_the_facts_in_any_order_and_batching(
    property_env: tuple[asyncio.AbstractEventLoop, Database, StatsStores],
    order_specs: list[tuple[int, int, int, list[tuple[int, int]]]],
    commission_specs: list[tuple[int, str, int, int]],
    bind_specs: list[tuple[int, int]],
    shuffle: random.Random,
) -> None:
    loop, db, stores = property_env
    promoters = [new_id() for _ in range(3)]
    expected = {(p, d): dict.fromkeys(FIGURES, 0) for p in promoters for d in range(DAYS)}
    events: list[Envelope] = []
    for promoter, amount, day, refund_specs in order_specs:
        order = new_id()
        events.append(paid(order, new_id(), [promoters[promoter]], [amount], _when(day)))
        expected[(promoters[promoter], day)]["order_count"] += 1
        expected[(promoters[promoter], day)]["order_amount"] += amount
        left = amount
        for percent, later in refund_specs:
            refund = min(left, amount * percent // 100)
            refund_day = min(DAYS - 1, day + later)
            left -= refund
            events.append(refunded(order, new_id(), [refund], _when(refund_day)))
            expected[(promoters[promoter], refund_day)]["order_amount"] -= refund
    for promoter, kind, amount, day in commission_specs:
        events.append(commissions(kind, new_id(), [(1, promoters[promoter], amount)], _when(day)))
        figure = "settled_commission_amount" if kind == "settled" else "commission_amount"
        expected[(promoters[promoter], day)][figure] += -amount if kind == "reversed" else amount
    for promoter, day in bind_specs:
        events.append(bound(new_id(), [promoters[promoter]], _when(day)))
        expected[(promoters[promoter], day)]["new_customers"] += 1

    # Any order, some events delivered twice, cut into micro-batches of any size.
    delivered = events + shuffle.sample(events, k=len(events) // 2)
    shuffle.shuffle(delivered)

    async def apply_and_read() -> dict[tuple[int, int], dict[str, int]]:
        start = 0
        while start < len(delivered):
            size = shuffle.randint(1, 6)
            await consume(db, stores, delivered[start : start + size])
            start += size
        seen = {}
        last = FIRST_DAY + timedelta(days=DAYS - 1)
        for promoter in promoters:
            for offset, row in enumerate(await reads.daily_rows(db, promoter, FIRST_DAY, last)):
                seen[(promoter, offset)] = {k: v for k, v in row.items() if k != "day"}
        return seen

    assert loop.run_until_complete(apply_and_read()) == expected
