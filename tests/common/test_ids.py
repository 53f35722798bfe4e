from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from libs.common.ids import MAX_ID, SHARD_COUNT, IdGenerator, NodeLease, shard_of, timestamp_of


def test_ids_are_unique_increasing_and_63_bit() -> None:
    generator = IdGenerator(5)
    ids = [generator.next_id(gene=3) for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(0 < i <= MAX_ID for i in ids)
    assert all(shard_of(i) == 3 for i in ids)


def test_random_gene_spreads_new_users_over_all_shards() -> None:
    generator = IdGenerator(1)
    counts = [0] * SHARD_COUNT
    for _ in range(16_000):
        counts[shard_of(generator.next_id())] += 1
    # A plain Snowflake would put nearly all of them in shard 0.
    assert min(counts) > 700 and max(counts) < 1300


def test_owned_rows_land_in_the_owners_shard() -> None:
    generator = IdGenerator(2)
    user_id = generator.next_id()
    orders = [generator.next_id_for(user_id) for _ in range(100)]
    assert {shard_of(o) for o in orders} == {shard_of(user_id)}


def test_timestamp_comes_back_from_the_id() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=2)
    entity_id = IdGenerator(0).next_id()
    after = datetime.now(UTC) + timedelta(milliseconds=2)
    assert before <= timestamp_of(entity_id) <= after


def test_two_nodes_never_collide() -> None:
    first, second = IdGenerator(7), IdGenerator(8)
    ids = {first.next_id(gene=0) for _ in range(5000)} | {
        second.next_id(gene=0) for _ in range(5000)
    }
    assert len(ids) == 10_000


def test_bad_node_and_gene_are_refused() -> None:
    with pytest.raises(ValueError):
        IdGenerator(1024)
    with pytest.raises(ValueError):
        IdGenerator(0).next_id(gene=16)


async def test_leased_node_ids_are_distinct_and_released(redis_url: str, key_prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    leases = [NodeLease(redis, key_prefix, ttl_seconds=5) for _ in range(20)]
    nodes = await asyncio.gather(*(lease.acquire() for lease in leases))
    assert len(set(nodes)) == 20
    await leases[0].release()
    assert await redis.get(f"{key_prefix}snowflake:node:{nodes[0]}") is None
    # Another owner's key is never deleted by a release.
    assert await redis.get(f"{key_prefix}snowflake:node:{nodes[1]}") == leases[1].token.encode()
    for lease in leases[1:]:
        await lease.release()
    await redis.aclose()
