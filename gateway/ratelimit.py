"""Token-bucket rate limits in Redis, per caller and route.

One Lua script per request: refill the bucket by the time passed (Redis's own clock, so
gateway replicas with skewed clocks agree), take one token or say how long until one is
there. A refused request gets 429 with ``Retry-After``. If Redis is down or does not answer
within ``redis_timeout_seconds`` the request passes (fail open: a broken limiter must not
take the API down) and ``promoter_redis_failures_total{use="rate_limit"}`` counts it.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from libs.common.metrics import REDIS_FAILURES

# KEYS[1] bucket; ARGV: rate per second, burst. Returns {allowed, retry_after_ms}.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + (now - at) * rate / 1000)
local allowed = 0
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait_ms = math.ceil((1 - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait_ms}
"""


@dataclass(frozen=True)
class Limit:
    per_second: float
    burst: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_seconds: int = 0


class RateLimiter:
    def __init__(self, redis: Redis, prefix: str, timeout_seconds: float = 2.0) -> None:
        self.redis = redis
        self.prefix = prefix
        self.timeout_seconds = timeout_seconds
        self._script = redis.register_script(_TAKE)

    async def take(self, identity: str, route: str, limit: Limit) -> Decision:
        key = f"{self.prefix}gateway:rate:{identity}:{route}"
        try:
            async with asyncio.timeout(self.timeout_seconds):
                allowed, wait_ms = await self._script(
                    keys=[key], args=[limit.per_second, limit.burst]
                )
        except (RedisError, TimeoutError):
            REDIS_FAILURES.labels("rate_limit").inc()
            return Decision(True)
        if int(allowed):
            return Decision(True)
        return Decision(False, max(1, math.ceil(int(wait_ms) / 1000)))
