"""Redis taken away mid-use through the chaos proxy (connections reset, new ones refused),
not only a Redis that was never there: the settlement leader and locks fail closed, the cache
is bypassed, each failure is counted in ``promoter_redis_failures_total{use}``, and all of it
recovers when Redis is back. Rate limits failing open with the metric are tested through the
gateway in tests/gateway/test_limits.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from chaos.proxy import TcpProxy
from deploy.local.stack import free_port
from libs.common.redis import Cache, LeaderElection, Lock


def _failures(use: str) -> float:
    return REGISTRY.get_sample_value("promoter_redis_failures_total", {"use": use}) or 0.0


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[TcpProxy]:
    target = urlsplit(redis_url)
    running = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379, free_port())
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def redis(proxy: TcpProxy, redis_url: str) -> AsyncIterator[Redis]:
    database = urlsplit(redis_url).path.strip("/") or "0"
    client = Redis.from_url(
        f"redis://{proxy.address}/{database}", socket_timeout=1, socket_connect_timeout=1
    )
    yield client
    await client.aclose()


async def _down(proxy: TcpProxy) -> None:
    """Cut every connection and refuse new ones until ``_up``."""
    proxy.cuts += 1
    await proxy._close_listener()
    await proxy._drop_all()


async def test_the_settlement_leader_steps_down_while_redis_is_away(
    proxy: TcpProxy, redis: Redis, key_prefix: str
) -> None:
    leader = LeaderElection(redis, f"{key_prefix}commission:settlement-leader", ttl_seconds=1)
    assert await leader.step() is True
    before = _failures("lock")
    await _down(proxy)
    # Fail closed: without Redis nobody can know there is one leader, so nobody leads and
    # nothing is scheduled (POST /api/v1/settlements/run still settles through the database).
    assert await leader.step() is False
    assert await Lock(redis, f"{key_prefix}lock:payout").acquire() is False
    assert _failures("lock") >= before + 2
    await proxy.start()
    # Leadership comes back at the latest when the lease it held expires.
    await asyncio.sleep(1.2)
    assert await leader.step() is True


async def test_the_cache_is_bypassed_while_redis_is_away(
    proxy: TcpProxy, redis: Redis, key_prefix: str
) -> None:
    cache = Cache(redis, f"{key_prefix}stats:")
    database = {"order_count": 1}

    async def load() -> dict[str, int]:
        return dict(database)

    assert await cache.get_or_load("summary:7", load) == {"order_count": 1}
    before = _failures("cache")
    await _down(proxy)
    database["order_count"] = 2
    # Read from the database, every time, while Redis is away; an invalidation that fails
    # is counted and does not raise.
    assert await cache.get_or_load("summary:7", load) == {"order_count": 2}
    await cache.invalidate("summary:7")
    assert _failures("cache") >= before + 2
    await proxy.start()
    database["order_count"] = 3
    await cache.invalidate("summary:7")
    assert await cache.get_or_load("summary:7", load) == {"order_count": 3}
