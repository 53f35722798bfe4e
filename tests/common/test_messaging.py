"""Outbox → real broker → inbox, in one process, on both database backends."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from sqlalchemy import Column, Integer, MetaData, String, Table, func, select, text

from deploy.local.stack import free_port, tansu_binary, wait_port
from libs.common.db.common_tables import COMMON_MIGRATION, outbox_parts_migration
from libs.common.db.engine import Database, Tx
from libs.common.db.migrations import Migration, MigrationContext, migrate
from libs.common.messaging.consumer import (
    EventConsumer,
    PoisonMessage,
    Subscription,
    dead_letters,
    replay_dead_letters,
)
from libs.common.messaging.envelope import Envelope
from libs.common.messaging.kafka import ensure_topics, make_producer
from libs.common.messaging.outbox import (
    NOT_PUBLISHED,
    PART_MIN_LENGTH,
    ROW,
    OutboxRelay,
    mark_published,
    outbox,
    outbox_part,
    publish,
    unpublished,
    utcnow,
    whole_rows,
)
from libs.common.settings import ServiceSettings
from tests.common.sample_events import sample_event

effects_meta = MetaData()
effects = Table(
    "effects",
    effects_meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(191), nullable=False),
)


async def _effects_schema(ctx: MigrationContext) -> None:
    await ctx.create_tables(effects_meta)


MIGRATIONS = [COMMON_MIGRATION, Migration(2, "effects", _effects_schema)]


FIXED = {"poison": False}  # flipped by the replay test: "the bug was fixed and deployed"


async def _apply(tx: Tx, events: Sequence[Envelope]) -> None:
    for event in events:
        if event.data.get("poison") and not FIXED["poison"]:
            raise PoisonMessage("this event can never be applied")
    conn = await tx.main()
    # Not unique on purpose: only the inbox may stop duplicates.
    await conn.execute(effects.insert(), [{"event_id": e.id} for e in events])


Apply = Callable[[Tx, Sequence[Envelope]], Awaitable[None]]


async def _effect_counts(db: Database) -> dict[str, int]:
    async with db.read(may_lag=False) as conn:
        rows = await conn.execute(
            select(effects.c.event_id, func.count()).group_by(effects.c.event_id)
        )
        return {row[0]: row[1] for row in rows}


class Harness:
    def __init__(self, db: Database, bootstrap: str, apply: Apply = _apply) -> None:
        name = f"t{secrets.token_hex(3)}"
        self.topic = f"test.{name}"
        self.settings = ServiceSettings(
            service_name=name,
            kafka_bootstrap_servers=bootstrap,
            outbox_poll_seconds=0.01,
            consumer_max_retries=2,
        )
        self.db = db
        self.apply = apply
        self.producer = make_producer(self.settings)
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.producer.start()
        self.relay = OutboxRelay(self.db, self.producer, self.settings, [self.topic])
        self.consumer = EventConsumer(
            Subscription("effects", [self.topic], self.apply), self.db, self.producer, self.settings
        )
        self.tasks = [
            asyncio.create_task(self.relay.run(self.stop)),
            asyncio.create_task(self.consumer.run(self.stop)),
        ]

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait(self.tasks, timeout=10)
        for task in self.tasks:
            task.cancel()
        await self.producer.stop()

    async def emit(self, *events: Envelope, shared: Sequence[str] = ()) -> None:
        async def work(tx: Tx) -> None:
            await publish(tx, self.topic, *events, shared=shared)

        await self.db.run(work)


async def _eventually(check, seconds: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            assert await check()
            return
        except AssertionError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_outbox_events_are_applied_exactly_once(db: Database, broker: str) -> None:
    await migrate(db, MIGRATIONS)
    harness = Harness(db, broker)
    await harness.start()
    try:
        events = [sample_event(n) for n in range(50)]
        await harness.emit(*events[:25])
        await harness.emit(*events[25:])
        await harness.emit(events[0])  # the same fact again: the outbox skips it
        # The same message on the wire twice (a relay that crashed before marking).
        raw: AIOKafkaProducer = harness.producer
        for event in events[:5]:
            await raw.send_and_wait(harness.topic, event.to_bytes(), key=event.key.encode())

        async def all_once() -> bool:
            counts = await _effect_counts(db)
            return len(counts) == 50 and set(counts.values()) == {1}

        await _eventually(all_once)
        await asyncio.sleep(0.5)  # and no late duplicate shows up
        assert await all_once()
        assert await harness.relay.backlog() == 0
    finally:
        await harness.close()


async def test_a_poll_is_one_transaction_across_partitions(db: Database, broker: str) -> None:
    """What one poll brings from several partitions is applied in one transaction (a handler
    that sums along paths pays per transaction), each partition's events in their order."""
    await migrate(db, MIGRATIONS)
    calls: list[list[str]] = []

    async def keep(tx: Tx, events: Sequence[Envelope]) -> None:
        calls.append([e.key for e in events])
        await _apply(tx, events)

    harness = Harness(db, broker, keep)
    await ensure_topics(harness.settings, [harness.topic])
    await harness.producer.start()
    events = [sample_event(n) for n in range(40)]
    partition_of = {}
    for event in events:
        sent = await harness.producer.send_and_wait(
            harness.topic, event.to_bytes(), key=event.key.encode()
        )
        partition_of[event.key] = sent.partition
    consumer = EventConsumer(
        Subscription("effects", [harness.topic], keep), db, harness.producer, harness.settings
    )
    task = asyncio.create_task(consumer.run(harness.stop))
    try:

        async def all_applied() -> bool:
            return len(await _effect_counts(db)) == len(events)

        await _eventually(all_applied)
    finally:
        harness.stop.set()
        await asyncio.wait([task], timeout=10)
        task.cancel()
        await harness.producer.stop()
    assert sorted(key for call in calls for key in call) == sorted(e.key for e in events)
    assert len(set(partition_of.values())) > 1
    assert max(len({partition_of[key] for key in call}) for call in calls) > 1
    for call in calls:
        for partition in set(partition_of.values()):
            keys = [int(key) for key in call if partition_of[key] == partition]
            assert keys == sorted(keys)  # sent in key order, applied in it


async def test_rows_from_before_the_not_published_mark_are_published_too(
    db: Database, broker: str
) -> None:
    """Rows written by earlier versions have NULL, not the mark, until they are published:
    the relay publishes both kinds, in seq order, and marks them with the time."""
    await migrate(db, MIGRATIONS)
    harness = Harness(db, broker)
    events = [sample_event(n) for n in range(6)]
    await harness.emit(*events[:2])

    async def legacy(tx: Tx) -> None:
        await (await tx.main()).execute(
            outbox.insert(),
            [
                {
                    "event_id": e.id,
                    "topic": harness.topic,
                    "event_key": e.key,
                    "payload": e.to_bytes().decode(),
                    "created_at": utcnow(),
                    "published_at": None,
                }
                for e in events[2:4]
            ],
        )

    await db.run(legacy)
    await harness.emit(*events[4:])
    async with db.read(may_lag=False) as conn:
        pending = await conn.scalar(select(func.count()).select_from(outbox).where(unpublished()))
    assert pending == 6
    await harness.start()
    try:

        async def all_once() -> bool:
            counts = await _effect_counts(db)
            return set(counts) == {e.id for e in events} and set(counts.values()) == {1}

        await _eventually(all_once)
        assert await harness.relay.backlog() == 0
        async with db.read(may_lag=False) as conn:
            marks = (await conn.execute(select(outbox.c.published_at))).scalars().all()
        assert len(marks) == 6 and all(mark > NOT_PUBLISHED for mark in marks)
    finally:
        await harness.close()


async def test_marking_a_big_row_published_rewrites_it_in_place(tmp_path: Path) -> None:
    """On SQLite: the not-published mark has a timestamp's size, so the mark rewrites only the
    page that holds it. A NULL turned into a timestamp copied a 14 KB payload (a 1,000-deep
    bind event) to new overflow pages: 9 log frames instead of 2."""
    path = tmp_path / "outbox.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await migrate(db, [COMMON_MIGRATION])
    events = [sample_event(n, path="," + "1y2p0ij32e8e7," * 1000) for n in range(20)]

    async def write(tx: Tx) -> None:
        await publish(tx, "test.big", *events)

    await db.run(write)

    def log_frames(checkpoint: str) -> int:
        conn = sqlite3.connect(path)
        try:
            # The engine's background checkpointer may be mid-pass: SQLite then answers busy
            # (-1 frames); ask again.
            for _ in range(500):
                busy, frames, _copied = conn.execute(
                    f"PRAGMA wal_checkpoint({checkpoint})"
                ).fetchone()
                if not busy and frames >= 0:
                    return int(frames)
                time.sleep(0.01)
            raise AssertionError("the log stayed busy for 5 s")
        finally:
            conn.close()

    async with db.read(may_lag=False) as conn:
        seqs = (await conn.execute(select(outbox.c.seq))).scalars().all()
    frames = []
    for seq in seqs[:10]:
        # Copied back and emptied: the next writer starts the log over.
        assert await asyncio.to_thread(log_frames, "TRUNCATE") == 0

        async def mark(tx: Tx, seq: int = seq) -> None:
            await mark_published(await tx.main(), [seq])

        await db.run(mark)
        frames.append(await asyncio.to_thread(log_frames, "PASSIVE"))
    await db.dispose()
    assert max(frames) <= 3, frames


async def test_big_repeated_values_are_stored_once_and_published_whole(
    db: Database, broker: str
) -> None:
    """A shared field's big value is written once however many events carry it, and every
    event reaches the broker whole, byte for byte as written (big integers, floats and
    escapes included); a value under the threshold stays in its row."""
    await migrate(db, MIGRATIONS)
    received: dict[str, Envelope] = {}

    async def keep(tx: Tx, events: Sequence[Envelope]) -> None:
        received.update({e.id: e for e in events})

    harness = Harness(db, broker, keep)
    chain = "," + "1y2p0ij32e8e7," * 400  # 5,601 characters
    other = "," + "5" * (PART_MIN_LENGTH - 2) + ","
    short = "," + "7" * (PART_MIN_LENGTH - 3) + ","
    events = [
        *(
            sample_event(
                n,
                chain=chain,
                big=2**63 - 1 - n,
                ratio=0.1 + n,
                small=-1e-7 * (n + 1),
                nested={"a": [1, -2.5, None, True]},
                note='天 "x"',
            )
            for n in range(3)
        ),
        sample_event(3, chain=other, previous=chain),
        sample_event(4, chain=short),
        sample_event(5, chain=None),
    ]
    await harness.emit(*events[:2], shared=("chain", "previous"))
    await harness.emit(*events[2:], shared=("chain", "previous"))

    async with db.read(may_lag=False) as conn:
        parts = dict((await conn.execute(select(outbox_part.c.digest, outbox_part.c.body))).all())
        rows = (await conn.execute(select(*ROW).order_by(outbox.c.seq))).all()
        whole = await whole_rows(conn, rows)
    assert sorted(parts.values()) == sorted([chain, other])
    stored = {row.event_key: row for row in rows}
    assert [len(stored[str(n)].payload) < 400 for n in range(6)] == [True] * 4 + [False, True]
    assert [stored[str(n)].parts is None for n in range(6)] == [False] * 4 + [True, True]
    assert [payload for _, _, _, payload in whole] == [e.to_bytes().decode() for e in events]

    await harness.start()
    try:

        async def all_received() -> bool:
            return len(received) == len(events)

        await _eventually(all_received)
    finally:
        await harness.close()
    for event in events:
        assert received[event.id].data == event.data
        assert received[event.id].to_bytes() == event.to_bytes()


async def test_a_part_is_remembered_only_once_committed(db: Database) -> None:
    """A process does not write a part it has committed again; a part whose transaction rolled
    back is written by the next event that needs it, so no row ever lacks its part."""
    await migrate(db, MIGRATIONS)
    chain = "," + "2k9x0ij32e8e7," * 300

    class Refused(Exception):
        pass

    async def refused(tx: Tx) -> None:
        await publish(tx, "test.parts", sample_event(0, chain=chain), shared=("chain",))
        raise Refused

    with pytest.raises(Refused):
        await db.run(refused)
    events = [sample_event(n, chain=chain) for n in (1, 2)]

    async def emit(event: Envelope) -> None:
        async def work(tx: Tx) -> None:
            await publish(tx, "test.parts", event, shared=("chain",))

        await db.run(work)

    async def forget_parts(tx: Tx) -> None:
        # Never done in life: shows that the second event does not write the part again.
        await (await tx.main()).execute(outbox_part.delete())

    await emit(events[0])
    async with db.read(may_lag=False) as conn:
        first_part = (await conn.execute(select(outbox_part.c.digest, outbox_part.c.body))).all()
    await db.run(forget_parts)
    await emit(events[1])
    async with db.read(may_lag=False) as conn:
        second_part = (await conn.execute(select(outbox_part.c.digest))).all()
        rows = (await conn.execute(select(*ROW).order_by(outbox.c.seq))).all()
    assert [body for _, body in first_part] == [chain]
    assert second_part == []  # the second event took the remembered digest
    assert [row.event_key for row in rows] == ["1", "2"]
    assert [orjson.loads(row.parts) for row in rows] == [{"chain": first_part[0][0]}] * 2


async def test_an_outbox_from_before_gets_its_parts(db: Database) -> None:
    """A database whose outbox predates parts gains the column and the table; its rows
    read back as they were written."""
    await migrate(db, [COMMON_MIGRATION])
    event = sample_event(1, chain="," + "1y2p0ij32e8e7," * 100)
    async with db.primary.begin() as conn:  # as the version before left it
        await conn.execute(text("DROP TABLE outbox_part"))
        await conn.execute(text("ALTER TABLE outbox DROP COLUMN parts"))
        await conn.execute(
            text(
                "INSERT INTO outbox (event_id, topic, event_key, payload, created_at)"
                " VALUES (:id, 'test.old', :key, :payload, :now)"
            ),
            {
                "id": event.id,
                "key": event.key,
                "payload": event.to_bytes().decode(),
                "now": utcnow(),
            },
        )
    await migrate(db, [COMMON_MIGRATION, outbox_parts_migration(2)])
    await migrate(db, [COMMON_MIGRATION, outbox_parts_migration(2)])  # twice: nothing to do

    async def write(tx: Tx) -> None:
        await publish(tx, "test.new", sample_event(2, chain=event.data["chain"]), shared=("chain",))

    await db.run(write)
    async with db.read(may_lag=False) as conn:
        rows = await whole_rows(
            conn, (await conn.execute(select(*ROW).order_by(outbox.c.seq))).all()
        )
        assert await conn.scalar(select(func.count()).select_from(outbox_part)) == 1
    assert rows[0][3] == event.to_bytes().decode()
    assert orjson.loads(rows[1][3])["data"]["chain"] == event.data["chain"]


async def test_poison_messages_go_to_the_dead_letter_table(db: Database, broker: str) -> None:
    await migrate(db, MIGRATIONS)
    harness = Harness(db, broker)
    await harness.start()
    try:
        good_before, bad, good_after = (
            sample_event(1),
            sample_event(2, poison=True),
            sample_event(3),
        )
        await harness.emit(good_before, bad, good_after)
        await harness.producer.send_and_wait(harness.topic, b"{not json", key=b"x")

        async def settled() -> bool:
            async with db.read(may_lag=False) as conn:
                dead = (
                    await conn.execute(
                        select(dead_letters.c.event_id, dead_letters.c.reason).where(
                            dead_letters.c.topic == harness.topic
                        )
                    )
                ).all()
            counts = await _effect_counts(db)
            return len(dead) == 2 and counts == {good_before.id: 1, good_after.id: 1}

        await _eventually(settled)
        async with db.read(may_lag=False) as conn:
            reasons = dict(
                (
                    await conn.execute(
                        select(dead_letters.c.event_id, dead_letters.c.reason).where(
                            dead_letters.c.topic == harness.topic
                        )
                    )
                ).all()
            )
        assert reasons[bad.id].startswith("poison: this event can never be applied")
        assert reasons[None].startswith("undecodable envelope")

        # After a fix, a replay applies the dead letter once; the undecodable one stays.
        FIXED["poison"] = True
        try:
            report = await replay_dead_letters(db, [harness.consumer])
            again = await replay_dead_letters(db, [harness.consumer])
        finally:
            FIXED["poison"] = False
        assert report.replayed == 1 and len(report.failed) == 1
        assert again.replayed == 0 and len(again.failed) == 1
        assert await _effect_counts(db) == {good_before.id: 1, good_after.id: 1, bad.id: 1}
    finally:
        await harness.close()


@pytest.fixture
def restartable_broker():  # type: ignore[no-untyped-def]
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        process = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        wait_port("127.0.0.1", port, 20, process)

    def stop() -> None:
        processes[-1].kill()
        processes[-1].wait(10)

    start()
    yield f"127.0.0.1:{port}", start, stop
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)


async def test_relay_republishes_after_the_broker_lost_its_memory(
    db: Database,
    restartable_broker,  # type: ignore[no-untyped-def]
) -> None:
    bootstrap, start_broker, stop_broker = restartable_broker
    await migrate(db, MIGRATIONS)
    harness = Harness(db, bootstrap)
    await harness.start()
    try:
        first = [sample_event(n) for n in range(10)]
        await harness.emit(*first)

        async def first_applied() -> bool:
            return len(await _effect_counts(db)) == 10

        await _eventually(first_applied)
        stop_broker()
        start_broker()  # empty: topics, messages and consumer offsets are gone
        later = [sample_event(n) for n in range(10, 15)]
        await harness.emit(*later)

        async def all_once() -> bool:
            counts = await _effect_counts(db)
            return len(counts) == 15 and set(counts.values()) == {1}

        await _eventually(all_once, seconds=60)
    finally:
        await harness.close()


async def test_a_republish_cut_short_is_done_again(
    db: Database,
    restartable_broker,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay leaves its marker on a broker that lost its memory before it republishes;
    when the republish fails half-way (a broker just restarted answers with errors for a
    moment), the relay republishes again at its next turn: the marker is there, but the
    events the broker lost are still owed (the chaos test once lost paid orders this way)."""
    bootstrap, start_broker, stop_broker = restartable_broker
    await migrate(db, MIGRATIONS)
    harness = Harness(db, bootstrap)
    await harness.producer.start()
    relay = OutboxRelay(db, harness.producer, harness.settings, [harness.topic])
    harness.tasks = [asyncio.create_task(relay.run(harness.stop))]
    try:
        events = [sample_event(n) for n in range(10)]
        await harness.emit(*events)

        async def all_published() -> bool:
            return await relay.backlog() == 0

        await _eventually(all_published)
        failed: list[str] = []
        send = harness.producer.send

        async def send_failing_once(topic: str, *args: Any, **kwargs: Any) -> Any:
            if not failed:
                failed.append(topic)
                raise KafkaError("the broker is not ready yet")
            return await send(topic, *args, **kwargs)

        monkeypatch.setattr(harness.producer, "send", send_failing_once)
        stop_broker()
        start_broker()  # empty: the ten published events are gone before anyone read them

        async def republish_failed() -> bool:
            return failed == [harness.topic]

        await _eventually(republish_failed)
        consumer = EventConsumer(
            Subscription("effects", [harness.topic], _apply), db, harness.producer, harness.settings
        )
        harness.tasks.append(asyncio.create_task(consumer.run(harness.stop)))

        async def all_once() -> bool:
            counts = await _effect_counts(db)
            return counts == {event.id: 1 for event in events}

        await _eventually(all_once, seconds=60)
    finally:
        await harness.close()
