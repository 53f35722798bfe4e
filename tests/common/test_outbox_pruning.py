"""Pruning the outbox (docs/decisions/0806-outbox-pruning.md): published rows go once they
are past the keep period, rows waiting to be published never, and a big value stored apart
stays as long as any row may still name it."""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime, timedelta

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import Table, func, select, text, update
from sqlalchemy.sql.elements import ColumnElement

from libs.common.db.common_tables import (
    COMMON_MIGRATION,
    outbox_part_use_migration,
    outbox_parts_migration,
)
from libs.common.db.engine import Database, Tx
from libs.common.db.migrations import migrate
from libs.common.messaging import outbox as outbox_module
from libs.common.messaging.envelope import Envelope
from libs.common.messaging.kafka import make_producer
from libs.common.messaging.outbox import (
    NOT_PUBLISHED,
    PART_USE_REFRESH,
    ROW,
    OutboxRelay,
    _PartsWritten,
    outbox,
    outbox_part,
    publish,
    utcnow,
    whole_rows,
)
from libs.common.messaging.outbox_pruning import PRUNE_BATCH, Pruned, prune_outbox
from libs.common.settings import ServiceSettings
from tests.common.sample_events import sample_event

MIGRATIONS = [COMMON_MIGRATION, outbox_parts_migration(2), outbox_part_use_migration(3)]
KEEP = timedelta(days=8)
TOPIC = "test.pruning"


def _chain(seed: str) -> str:
    return "," + f"{seed}2p0ij32e8e7," * 200  # 2,801 characters: stored apart


async def _emit(db: Database, *events: Envelope) -> None:
    async def work(tx: Tx) -> None:
        await publish(tx, TOPIC, *events, shared=("chain",))

    await db.run(work)


async def _set(db: Database, table: Table, where: ColumnElement[bool], **values: object) -> None:
    async def work(tx: Tx) -> None:
        await (await tx.main()).execute(update(table).where(where).values(**values))

    await db.run(work)


async def _keys(db: Database) -> list[str]:
    async with db.read(may_lag=False) as conn:
        return list((await conn.scalars(select(outbox.c.event_key).order_by(outbox.c.seq))).all())


async def _parts(db: Database) -> dict[str, datetime]:
    async with db.read(may_lag=False) as conn:
        found = await conn.execute(select(outbox_part.c.body, outbox_part.c.used_at))
        return {str(body): used_at for body, used_at in found}


async def test_published_rows_go_after_the_keep_period_and_waiting_rows_never(
    db: Database,
) -> None:
    await migrate(db, MIGRATIONS)
    await _emit(db, *(sample_event(n) for n in range(5)))
    now = utcnow()
    by_key = {str(n): outbox.c.event_key == str(n) for n in range(5)}
    await _set(db, outbox, by_key["0"], published_at=now - KEEP - timedelta(minutes=1))
    await _set(db, outbox, by_key["1"], published_at=now - KEEP + timedelta(minutes=1))
    await _set(db, outbox, by_key["2"], published_at=now)
    # Waiting for a month: the mark, and NULL as rows from before the mark were written.
    await _set(db, outbox, by_key["3"], created_at=now - timedelta(days=30))
    await _set(db, outbox, by_key["4"], created_at=now - timedelta(days=30), published_at=None)

    assert await prune_outbox(db, KEEP, now) == Pruned(rows=1, parts=0)
    assert await _keys(db) == ["1", "2", "3", "4"]
    assert await prune_outbox(db, KEEP, now) == Pruned(rows=0, parts=0)

    # More than a batch: every old row goes, a transaction per batch.
    many = PRUNE_BATCH * 2 + 500
    await _emit(db, *(sample_event(n) for n in range(100, 100 + many)))
    await _set(
        db,
        outbox,
        outbox.c.event_key.in_([str(n) for n in range(100, 100 + many)]),
        published_at=now - timedelta(days=9),
    )
    assert await prune_outbox(db, KEEP, now) == Pruned(rows=many, parts=0)
    assert await _keys(db) == ["1", "2", "3", "4"]


async def test_a_part_stays_while_a_row_may_name_it(db: Database) -> None:
    """A part goes once nothing has used it for the keep period plus twice the refresh
    interval and a margin; a part named by a row still waiting to be published stays, and that
    row still reads back whole."""
    await migrate(db, MIGRATIONS)
    unused, lately, waiting = _chain("1y"), _chain("3k"), _chain("9z")
    await _emit(
        db,
        sample_event(1, chain=unused),
        sample_event(2, chain=lately),
        sample_event(3, chain=waiting),
    )
    now = utcnow()
    ten_days_ago, nine_days_ago = now - timedelta(days=10), now - timedelta(days=9)
    published = outbox.c.event_key.in_(["1", "2"])
    await _set(db, outbox, published, created_at=ten_days_ago, published_at=ten_days_ago)
    await _set(db, outbox, outbox.c.event_key == "3", created_at=nine_days_ago)
    await _set(db, outbox_part, outbox_part.c.body == unused, used_at=ten_days_ago)
    await _set(db, outbox_part, outbox_part.c.body == waiting, used_at=nine_days_ago)
    # Unused for the keep period and a bit: inside the margin, so kept.
    await _set(db, outbox_part, outbox_part.c.body == lately, used_at=now - KEEP - PART_USE_REFRESH)

    assert await prune_outbox(db, KEEP, now) == Pruned(rows=2, parts=1)
    assert sorted(await _parts(db)) == sorted([lately, waiting])
    async with db.read(may_lag=False) as conn:
        rows = await whole_rows(conn, (await conn.execute(select(*ROW))).all())
    assert [Envelope.model_validate_json(payload).data["chain"] for *_, payload in rows] == [
        waiting
    ]

    # Once the waiting row is published and old, its part goes too; so does the other.
    await _set(db, outbox, outbox.c.event_key == "3", published_at=nine_days_ago)
    assert await prune_outbox(db, KEEP, now + 4 * PART_USE_REFRESH) == Pruned(rows=1, parts=2)
    assert await _parts(db) == {}


def test_a_process_remembers_a_part_for_the_refresh_interval() -> None:
    clock = [1000.0]
    memory = _PartsWritten(clock=lambda: clock[0])
    memory.add({"d1": "body"})
    clock[0] += PART_USE_REFRESH.total_seconds() - 1
    assert memory.get("body") == "d1"
    clock[0] += 1
    assert memory.get("body") is None
    assert memory.get("body") is None  # forgotten for good


async def test_a_part_in_use_moves_its_use_forward_and_comes_back_after_pruning(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event that takes a part this process remembers writes nothing; one from a process
    that does not remember it (any more) writes it again, which moves its ``used_at``
    forward, or stores it anew if it was pruned."""
    await migrate(db, MIGRATIONS)
    chain = _chain("4q")
    await _emit(db, sample_event(1, chain=chain))
    hours_ago = (utcnow() - 2 * PART_USE_REFRESH).replace(microsecond=0)
    await _set(db, outbox_part, outbox_part.c.body == chain, used_at=hours_ago)

    await _emit(db, sample_event(2, chain=chain))  # remembered: nothing written
    assert (await _parts(db))[chain] == hours_ago

    monkeypatch.setitem(outbox_module._PARTS_WRITTEN, db, _PartsWritten())
    await _emit(db, sample_event(3, chain=chain))  # not remembered: written again, its use moves
    assert (await _parts(db))[chain] > utcnow() - timedelta(minutes=1)

    # Pruned with every row that named it, then taken again by an event of a process that
    # does not remember it: the part is stored again and the new row reads back whole.
    long_ago = utcnow() - timedelta(days=20)
    await _set(db, outbox, outbox.c.seq > 0, published_at=long_ago)
    await _set(db, outbox_part, outbox_part.c.body == chain, used_at=long_ago)
    assert await prune_outbox(db, KEEP) == Pruned(rows=3, parts=1)
    monkeypatch.setitem(outbox_module._PARTS_WRITTEN, db, _PartsWritten())
    await _emit(db, sample_event(4, chain=chain))
    async with db.read(may_lag=False) as conn:
        rows = await whole_rows(conn, (await conn.execute(select(*ROW))).all())
    assert [Envelope.model_validate_json(p).data for *_, p in rows] == [{"n": 4, "chain": chain}]


async def test_an_outbox_from_before_gets_the_use_of_its_parts(db: Database) -> None:
    """A parts table without ``used_at`` gains it; its parts count as used at the upgrade."""
    await migrate(db, MIGRATIONS[:2])
    await _emit(db, sample_event(1, chain=_chain("8w")))
    async with db.primary.begin() as conn:
        await conn.execute(text("ALTER TABLE outbox_part DROP COLUMN used_at"))
    before = utcnow() - timedelta(seconds=1)
    await migrate(db, MIGRATIONS)
    await migrate(db, MIGRATIONS)  # twice: nothing to do
    (used_at,) = (await _parts(db)).values()
    assert used_at >= before.replace(microsecond=0)


async def test_a_relay_that_caught_up_prunes(db: Database, broker: str) -> None:
    await migrate(db, MIGRATIONS)
    settings = ServiceSettings(
        service_name=f"t{secrets.token_hex(3)}",
        kafka_bootstrap_servers=broker,
        outbox_poll_seconds=0.01,
        outbox_republish_horizon_seconds=60,
        outbox_keep_published_seconds=60,
    )
    await _emit(db, *(sample_event(n, chain=_chain("6m")) for n in range(3)))
    await _set(db, outbox, outbox.c.event_key != "2", published_at=utcnow() - timedelta(minutes=2))
    producer: AIOKafkaProducer = make_producer(settings)
    await producer.start()
    stop = asyncio.Event()
    relay = OutboxRelay(db, producer, settings, [TOPIC])
    task = asyncio.create_task(relay.run(stop))
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while await _keys(db) != ["2"]:
            assert asyncio.get_running_loop().time() < deadline, await _keys(db)
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait([task], timeout=10)
        task.cancel()
        await producer.stop()
    # The last row was published by the relay just now: it and its part stay.
    async with db.read(may_lag=False) as conn:
        published_at = await conn.scalar(select(outbox.c.published_at))
        parts = await conn.scalar(select(func.count()).select_from(outbox_part))
    assert published_at is not None and published_at > NOT_PUBLISHED
    assert parts == 1
