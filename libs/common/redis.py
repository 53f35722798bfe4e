"""Redis access: one client per process with the key prefix, a cache-aside helper whose
fills cannot resurrect a stale value, and a lock with an owner token."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common.metrics import REDIS_FAILURES

log = logging.getLogger("tuike.redis")
T = TypeVar("T")


def connect(url: str) -> Redis:
    return Redis.from_url(
        url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=30
    )


# Fill only if nobody invalidated since we read the generation (KEYS: value, generation).
_FILL_IF_CURRENT = """
local current = redis.call('get', KEYS[2]) or '0'
if current == ARGV[1] then
  redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


class Cache:
    """Cache-aside with a generation per key.

    The seed deleted the key and then bumped a version after the fact; a reader that loaded
    the old row before the write could still store it after the delete. Here a reader notes
    the key's generation before loading and stores its value only if the generation is
    unchanged; :meth:`invalidate` (run after the commit) bumps the generation, then deletes.
    If Redis is down the loader is called directly (cache bypassed, counted in a metric).
    """

    def __init__(self, redis: Redis, prefix: str, ttl_seconds: float = 300) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_ms = int(ttl_seconds * 1000)

    def _keys(self, key: str) -> tuple[str, str]:
        return f"{self.prefix}cache:{key}", f"{self.prefix}cache-gen:{key}"

    async def get_or_load(self, key: str, loader: Callable[[], Awaitable[T]]) -> T:
        value_key, generation_key = self._keys(key)
        try:
            cached, generation = await self.redis.mget(value_key, generation_key)
        except RedisError:
            REDIS_FAILURES.labels("cache").inc()
            return await loader()
        if cached is not None:
            return orjson.loads(cached)
        value = await loader()
        try:
            await self.redis.eval(
                _FILL_IF_CURRENT,
                2,
                value_key,
                generation_key,
                generation.decode() if isinstance(generation, bytes) else "0",
                orjson.dumps(value),
                self.ttl_ms,
            )
        except RedisError:
            REDIS_FAILURES.labels("cache").inc()
        return value

    async def invalidate(self, *keys: str) -> None:
        if not keys:
            return
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for key in keys:
                    value_key, generation_key = self._keys(key)
                    pipe.incr(generation_key)
                    pipe.pexpire(generation_key, self.ttl_ms * 4)
                    pipe.delete(value_key)
                await pipe.execute()
        except RedisError:
            # The value expires within its TTL; nothing else we can do without Redis.
            REDIS_FAILURES.labels("cache").inc()
            log.warning("cache invalidation failed for %s", keys)


_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
    "else return 0 end"
)
_EXTEND = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)


class LockNotAcquired(Exception):
    pass


class Lock:
    """A lock with an owner token: only the holder can extend or release it.

    Fails closed: if Redis cannot be reached, :meth:`acquire` says no.
    """

    def __init__(self, redis: Redis, name: str, ttl_seconds: float = 30) -> None:
        self.redis = redis
        self.name = name
        self.ttl_ms = int(ttl_seconds * 1000)
        self.token = secrets.token_hex(16)

    async def acquire(self) -> bool:
        try:
            return bool(await self.redis.set(self.name, self.token, nx=True, px=self.ttl_ms))
        except RedisError:
            REDIS_FAILURES.labels("lock").inc()
            return False

    async def extend(self) -> bool:
        try:
            return bool(await self.redis.eval(_EXTEND, 1, self.name, self.token, self.ttl_ms))
        except RedisError:
            REDIS_FAILURES.labels("lock").inc()
            return False

    async def release(self) -> bool:
        try:
            return bool(await self.redis.eval(_RELEASE, 1, self.name, self.token))
        except RedisError:
            REDIS_FAILURES.labels("lock").inc()
            return False

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        if not await self.acquire():
            raise LockNotAcquired(self.name)
        try:
            yield
        finally:
            await self.release()


class LeaderElection:
    """Keeps a lock renewed while this process leads (scheduler, relay); ``is_leader`` tells."""

    def __init__(self, redis: Redis, name: str, ttl_seconds: float = 10) -> None:
        self.lock = Lock(redis, name, ttl_seconds)
        self.is_leader = False

    async def step(self) -> bool:
        if self.is_leader:
            self.is_leader = await self.lock.extend()
        if not self.is_leader:
            self.is_leader = await self.lock.acquire()
        return self.is_leader

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.lock.ttl_ms / 3000)
            except TimeoutError:
                pass
        if self.is_leader:
            await self.lock.release()
            self.is_leader = False
