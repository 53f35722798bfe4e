from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from libs.common.redis import Cache, LeaderElection, Lock


async def test_lock_release_checks_the_owner_token(redis_url: str, key_prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    first = Lock(redis, f"{key_prefix}lock:settle", ttl_seconds=0.2)
    assert await first.acquire()
    assert not await Lock(redis, f"{key_prefix}lock:settle").acquire()
    await asyncio.sleep(0.3)  # first's lease expired; a second holder takes it
    second = Lock(redis, f"{key_prefix}lock:settle", ttl_seconds=5)
    assert await second.acquire()
    # The seed's lock had no token: here the late first holder cannot release the second's.
    assert not await first.release()
    assert not await first.extend()
    assert await redis.get(f"{key_prefix}lock:settle") == second.token.encode()
    assert await second.release()
    await redis.aclose()


async def test_lock_fails_closed_without_redis() -> None:
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    assert not await Lock(dead, "x").acquire()
    await dead.aclose()


async def test_only_one_leader(redis_url: str, key_prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    leaders = [LeaderElection(redis, f"{key_prefix}leader", ttl_seconds=5) for _ in range(5)]
    results = await asyncio.gather(*(leader.step() for leader in leaders))
    assert sum(results) == 1
    await redis.aclose()


async def test_cache_aside_returns_loaded_value_then_cached(
    redis_url: str, key_prefix: str
) -> None:
    redis = Redis.from_url(redis_url)
    cache = Cache(redis, key_prefix)
    calls = 0

    async def load() -> dict[str, int]:
        nonlocal calls
        calls += 1
        return {"order_count": calls}

    assert await cache.get_or_load("stats:1", load) == {"order_count": 1}
    assert await cache.get_or_load("stats:1", load) == {"order_count": 1}
    await cache.invalidate("stats:1")
    assert await cache.get_or_load("stats:1", load) == {"order_count": 2}
    await redis.aclose()


async def test_a_stale_fill_after_invalidation_is_refused(redis_url: str, key_prefix: str) -> None:
    """The seed's race: a reader loads the old row, the writer commits and invalidates, then
    the reader stores the old row. With generations the late fill is refused."""
    redis = Redis.from_url(redis_url)
    cache = Cache(redis, key_prefix)
    database = {"value": "old"}
    loaded = asyncio.Event()
    invalidated = asyncio.Event()

    async def slow_load() -> str:
        value = database["value"]  # reads the old row ...
        loaded.set()
        await invalidated.wait()  # ... while the writer commits and invalidates
        return value

    async def writer() -> None:
        await loaded.wait()
        database["value"] = "new"
        await cache.invalidate("k")
        invalidated.set()

    stale, _ = await asyncio.gather(cache.get_or_load("k", slow_load), writer())
    assert stale == "old"  # that reader saw the old value, fine ...

    async def load_now() -> str:
        return database["value"]

    # ... but it did not poison the cache for everyone after the write.
    assert await cache.get_or_load("k", load_now) == "new"
    await redis.aclose()


async def test_cache_bypassed_when_redis_is_down() -> None:
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    cache = Cache(dead, "x:")

    async def load() -> int:
        return 42

    assert await cache.get_or_load("k", load) == 42
    await cache.invalidate("k")  # no exception
    await dead.aclose()
