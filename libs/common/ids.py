"""63-bit ids: milliseconds, node, sequence and a 4-bit shard gene in the lowest bits.

Layout (high to low): 41 bits of milliseconds since 2024-01-01 UTC (good until 2093),
10 bits of node id, 8 bits of sequence, 4 bits of shard gene. A plain Snowflake would put
almost every id in shard 0 (``id % 16`` = 0 when the sequence restarts each millisecond), so
the gene is explicit: random for a new user (uniform shards), the owner's gene for a row keyed
by a user, so ``id % 16`` finds the shard from the id alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import threading
import time
from datetime import UTC, datetime

EPOCH_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
TIME_BITS, NODE_BITS, SEQUENCE_BITS, GENE_BITS = 41, 10, 8, 4
SHARD_COUNT = 1 << GENE_BITS
MAX_NODE = (1 << NODE_BITS) - 1
_SEQUENCE_MASK = (1 << SEQUENCE_BITS) - 1
_NODE_SHIFT = SEQUENCE_BITS + GENE_BITS
_TIME_SHIFT = NODE_BITS + SEQUENCE_BITS + GENE_BITS
MAX_ID = (1 << 63) - 1


def shard_of(entity_id: int) -> int:
    """The logical shard (0..15) an id belongs to: its gene."""
    return entity_id % SHARD_COUNT


def timestamp_of(entity_id: int) -> datetime:
    """When the id was made (UTC); monthly tables are chosen from it."""
    return datetime.fromtimestamp(((entity_id >> _TIME_SHIFT) + EPOCH_MS) / 1000, tz=UTC)


def min_id_at(moment: datetime) -> int:
    """The smallest id that could have been made at ``moment``: a lower bound for range scans."""
    return (int(moment.timestamp() * 1000) - EPOCH_MS) << _TIME_SHIFT


class IdGenerator:
    """Thread-safe, monotonic generator for one node; ids from two nodes never collide."""

    def __init__(self, node_id: int) -> None:
        if not 0 <= node_id <= MAX_NODE:
            raise ValueError(f"node id must be in 0..{MAX_NODE}")
        self.node_id = node_id
        self._lock = threading.Lock()
        self._last_ms = -1
        self._sequence = 0

    def _tick(self) -> tuple[int, int]:
        with self._lock:
            now = int(time.time() * 1000) - EPOCH_MS
            if now < self._last_ms:
                # The clock stepped back: keep issuing on the last millisecond we used, so
                # ids stay unique and increasing; the sequence overflow below waits it out.
                now = self._last_ms
            if now == self._last_ms:
                self._sequence = (self._sequence + 1) & _SEQUENCE_MASK
                if self._sequence == 0:
                    now = self._last_ms + 1
                    while int(time.time() * 1000) - EPOCH_MS < now:
                        time.sleep(0.0002)
            else:
                self._sequence = 0
            self._last_ms = now
            return now, self._sequence

    def next_id(self, gene: int | None = None) -> int:
        """A new id. ``gene`` = the shard to land in; None = a random shard (new users)."""
        if gene is None:
            gene = secrets.randbelow(SHARD_COUNT)
        elif not 0 <= gene < SHARD_COUNT:
            raise ValueError("gene must be in 0..15")
        now, sequence = self._tick()
        return (now << _TIME_SHIFT) | (self.node_id << _NODE_SHIFT) | (sequence << GENE_BITS) | gene

    def next_id_for(self, owner_id: int) -> int:
        """A new id in the same shard as ``owner_id`` (an order of a buyer, an account)."""
        return self.next_id(shard_of(owner_id))


class NodeLease:
    """Leases a node id from Redis (``SET NX`` with a TTL, renewed) so replicas never share one.

    The lease key holds a random owner token; renewal and release only touch a key that still
    holds our token.
    """

    _RENEW = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then "
        "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
    )

    def __init__(self, redis, key_prefix: str, ttl_seconds: int = 60) -> None:
        self.redis = redis
        self.key_prefix = key_prefix
        self.ttl_ms = ttl_seconds * 1000
        self.token = secrets.token_hex(16)
        self.node_id: int | None = None
        self._task: asyncio.Task[None] | None = None

    def _key(self, node: int) -> str:
        return f"{self.key_prefix}snowflake:node:{node}"

    async def acquire(self) -> int:
        start = secrets.randbelow(MAX_NODE + 1)
        for offset in range(MAX_NODE + 1):
            node = (start + offset) % (MAX_NODE + 1)
            if await self.redis.set(self._key(node), self.token, nx=True, px=self.ttl_ms):
                self.node_id = node
                self._task = asyncio.create_task(self._keep_alive())
                return node
        raise RuntimeError("no free snowflake node id: 1024 nodes are leased")

    async def _keep_alive(self) -> None:
        assert self.node_id is not None
        delay = self.ttl_ms / 3000
        while True:
            await asyncio.sleep(delay)
            try:
                renewed = await self.redis.eval(
                    self._RENEW, 1, self._key(self.node_id), self.token, self.ttl_ms
                )
            except Exception:
                # Redis briefly away: try again within a second, not a third of the lease
                # later, or two short outages in a row let the lease expire.
                delay = 1.0
                continue
            delay = self.ttl_ms / 3000
            if not renewed:
                # Someone else holds our node id: continuing could mint duplicate ids, so
                # stop this process and let its supervisor start it with a fresh lease.
                logging.getLogger("tuike.ids").critical("snowflake node lease lost; stopping")
                os.kill(os.getpid(), signal.SIGTERM)
                return

    async def release(self) -> None:
        if self._task:
            self._task.cancel()
        if self.node_id is not None:
            try:
                await self.redis.eval(
                    "if redis.call('get', KEYS[1]) == ARGV[1] then "
                    "return redis.call('del', KEYS[1]) else return 0 end",
                    1,
                    self._key(self.node_id),
                    self.token,
                )
            except Exception:
                pass
