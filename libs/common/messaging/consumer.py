"""Consumers with an inbox: effects and the ``(consumer, event_id)`` record commit in one
transaction, then the Kafka offset is committed (manual commit, never before processing).

A redelivered event finds its inbox row and changes nothing. A message that keeps failing
goes, after bounded retries, to ``<topic>.dlq`` and to the ``dead_letters`` table with the
reason, so it can be replayed after a fix even if the broker forgot it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    select,
)

from libs.common.db.engine import Database, Tx, is_retryable
from libs.common.db.prepared import Prepared
from libs.common.db.sql import insert_ignore
from libs.common.messaging.envelope import Envelope, dlq_topic
from libs.common.messaging.kafka import BrokerMemory, ensure_topics, start_with_retry
from libs.common.messaging.outbox import AutoId, LongText, utcnow
from libs.common.metrics import DLQ_MESSAGES, MESSAGE_QUEUE_SIZE, MESSAGES_CONSUMED
from libs.common.settings import ServiceSettings

log = logging.getLogger("tuike.consumer")

inbox_metadata = MetaData()
inbox = Table(
    "inbox",
    inbox_metadata,
    Column("consumer", String(64), primary_key=True),
    Column("event_id", String(191), primary_key=True),
    Column("processed_at", DateTime, nullable=False),
)
dead_letters = Table(
    "dead_letters",
    inbox_metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("consumer", String(64), nullable=False, index=True),
    Column("topic", String(128), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("event_id", String(191), nullable=True),
    Column("payload", LongText, nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("replayed_at", DateTime, nullable=True),
)

# A handler receives the new (not yet seen) events of one micro-batch in one transaction.
BatchHandler = Callable[[Tx, Sequence[Envelope]], Awaitable[None]]


@dataclass
class Subscription:
    name: str
    topics: Sequence[str]
    handler: BatchHandler
    event_types: frozenset[str] | None = None  # None = every type on the topics


class PoisonMessage(Exception):
    """Raised by a handler for a message that can never succeed (bad data): no retries."""


class _InboxRace(Exception):
    pass


# Which of a batch's events a consumer has recorded: once per micro-batch of every consumer.
_SEEN = Prepared(
    select(inbox.c.event_id).where(
        inbox.c.consumer == bindparam("consumer"),
        inbox.c.event_id.in_(bindparam("event_ids", expanding=True)),
    )
)


async def record_new(tx: Tx, consumer: str, events: Sequence[Envelope]) -> list[Envelope]:
    """Record events in the inbox; return those not seen before (in order, deduplicated)."""
    conn = await tx.main()
    unique: dict[str, Envelope] = {}
    for event in events:
        unique.setdefault(event.id, event)
    if not unique:
        return []
    found = await _SEEN.rows(conn, {"consumer": consumer, "event_ids": list(unique)})
    seen = {row["event_id"] for row in found}
    fresh = [e for e in unique.values() if e.id not in seen]
    now = utcnow()
    inserted = await insert_ignore(
        conn, inbox, [{"consumer": consumer, "event_id": e.id, "processed_at": now} for e in fresh]
    )
    if inserted != len(fresh):
        # Another consumer instance recorded some of them between our read and insert
        # (a rebalance): let the whole batch run again so the inbox decides per event.
        raise _InboxRace()
    return fresh


def _crash_point(settings: ServiceSettings, point: str, events: Sequence[Envelope]) -> None:
    """Fault injection for the reliability tests: an event whose data asks for a crash at
    ``point`` kills this process (SIGKILL) there, only when fault injection is enabled."""
    if not settings.fault_injection:
        return
    for event in events:
        if event.data.get("_crash_at") == point:
            log.warning("fault injection: SIGKILL at %s for %s", point, event.id)
            os.kill(os.getpid(), signal.SIGKILL)


class _JoinedListener(ConsumerRebalanceListener):
    def __init__(self, consumer: EventConsumer) -> None:
        self._consumer = consumer

    def on_partitions_revoked(self, revoked: object) -> None:
        return None

    def on_partitions_assigned(self, assigned: object) -> None:
        self._consumer.joined = True


class EventConsumer:
    def __init__(
        self,
        subscription: Subscription,
        db: Database,
        producer: AIOKafkaProducer,
        settings: ServiceSettings,
    ) -> None:
        self.subscription = subscription
        self.db = db
        self.producer = producer
        self.settings = settings
        self.name = f"{settings.service_name}.{subscription.name}"
        self.consumer: AIOKafkaConsumer | None = None
        # Set once the consumer has first joined its group (with or without partitions): a
        # new group waits a few seconds for its members before any event is read, and the
        # service's readiness waits for that (``Runtime.readiness``).
        self.joined = False

    async def _apply(self, events: Sequence[Envelope]) -> list[Envelope]:
        """Apply a batch in one transaction; returns the events that were new."""

        async def work(tx: Tx) -> list[Envelope]:
            fresh = await record_new(tx, self.name, events)
            wanted = [
                e
                for e in fresh
                if self.subscription.event_types is None or e.type in self.subscription.event_types
            ]
            if wanted:
                await self.subscription.handler(tx, wanted)
            return fresh

        return await self.db.run(work)

    async def _dead_letter(self, record: ConsumerRecord, event_id: str | None, reason: str) -> None:
        log.error("dead-lettering %s from %s: %s", event_id, record.topic, reason)
        payload = record.value or b""

        async def work(tx: Tx) -> None:
            await (await tx.main()).execute(
                dead_letters.insert().values(
                    consumer=self.name,
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    event_id=event_id,
                    payload=payload.decode(errors="replace"),
                    reason=reason[:2000],
                    created_at=utcnow(),
                )
            )

        await self.db.run(work)
        try:
            await self.producer.send_and_wait(
                dlq_topic(record.topic),
                value=payload,
                key=record.key,
                headers=[("reason", reason[:500].encode()), ("consumer", self.name.encode())],
            )
        except Exception:
            # The row in dead_letters is the durable copy; the topic is for tooling.
            log.exception("could not produce to %s", dlq_topic(record.topic))
        DLQ_MESSAGES.labels(self.name, record.topic).inc()
        MESSAGES_CONSUMED.labels(self.name, record.topic, "dead_lettered").inc()

    async def _process_one(self, record: ConsumerRecord) -> None:
        try:
            event = Envelope.from_bytes(record.value or b"")
        except ValidationError as exc:
            await self._dead_letter(record, None, f"undecodable envelope: {exc}")
            return
        delay = 0.05
        for attempt in range(1, self.settings.consumer_max_retries + 1):
            try:
                fresh = await self._apply([event])
                outcome = "applied" if fresh else "duplicate"
                MESSAGES_CONSUMED.labels(self.name, record.topic, outcome).inc()
                _crash_point(self.settings, "consumer.after_db_commit", fresh)
                return
            except PoisonMessage as exc:
                await self._dead_letter(record, event.id, f"poison: {exc}")
                return
            except Exception as exc:
                if attempt == self.settings.consumer_max_retries and is_retryable(exc):
                    # The database is away or busy, not the message bad: dead-lettering a good
                    # message would lose it until someone replays it. Give the batch back to
                    # run(), which rewinds to the committed offset and tries again later.
                    raise
                if attempt == self.settings.consumer_max_retries:
                    await self._dead_letter(
                        record, event.id, f"failed {attempt} times: {type(exc).__name__}: {exc}"
                    )
                    return
                log.warning("handling %s failed (attempt %d): %s", event.id, attempt, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _process_batch(self, records: list[ConsumerRecord]) -> None:
        events: list[Envelope] = []
        for record in records:
            try:
                events.append(Envelope.from_bytes(record.value or b""))
            except ValidationError:
                events = []
                break
        if events and len(events) == len(records):
            try:
                fresh = await self._apply(events)
                MESSAGES_CONSUMED.labels(self.name, records[0].topic, "applied").inc(len(fresh))
                MESSAGES_CONSUMED.labels(self.name, records[0].topic, "duplicate").inc(
                    len(events) - len(fresh)
                )
                # Only a newly applied event may ask for the crash: its redelivery after the
                # restart is a duplicate and must not kill the process again.
                _crash_point(self.settings, "consumer.after_db_commit", fresh)
                return
            except Exception as exc:
                log.warning("batch of %d failed (%s); handling one by one", len(records), exc)
        # One by one: a bad message cannot hold back the good ones around it.
        for record in records:
            await self._process_one(record)

    async def run(self, stop: asyncio.Event) -> None:
        topics = list(self.subscription.topics)
        await ensure_topics(self.settings, [*topics, *(dlq_topic(t) for t in topics)])
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap_servers,
            group_id=self.name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.consumer_batch_size,
            session_timeout_ms=10000,
            heartbeat_interval_ms=1000,
            # A member killed without leaving holds its partitions until its session
            # expires; a short rebalance timeout bounds how long the others wait for it.
            rebalance_timeout_ms=10000,
        )
        self.consumer.subscribe(topics, listener=_JoinedListener(self))
        await start_with_retry(self.consumer)
        memory = BrokerMemory(self.settings, f"consumer.{self.name}", topics[0])
        rewind, marked, checked = False, False, 0.0
        try:
            while not stop.is_set():
                try:
                    if not marked:
                        await memory.mark()
                        marked = True
                    if rewind:
                        await self._rewind()
                        rewind = False
                    loop_time = asyncio.get_running_loop().time()
                    if loop_time - checked > 1.0:
                        checked = loop_time
                        if await self._forgotten(memory, topics):
                            continue
                    batches = await self.consumer.getmany(
                        timeout_ms=200, max_records=self.settings.consumer_batch_size
                    )
                    # One transaction per topic, not per partition: a handler that sums
                    # (team counts along a 1,000-deep path) pays per transaction, and events
                    # of one parent's children are spread over every partition by their
                    # keys. Each partition's records stay in their order.
                    by_topic: dict[str, list[ConsumerRecord]] = {}
                    for partition, records in sorted(batches.items()):
                        by_topic.setdefault(partition.topic, []).extend(records)
                    for records in by_topic.values():
                        if records:
                            await self._process_batch(records)
                    # Never commit positions of a broker that forgot everything: on the new
                    # log they would skip events nobody has seen.
                    if batches and not await self._forgotten(memory, topics):
                        await self.consumer.commit()
                    await self._report_lag()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("consumer %s step failed; retrying", self.name)
                    # getmany() moved the positions past the batch that failed: without a
                    # rewind, the next commit would skip it and its events would be lost.
                    rewind = True
                    await asyncio.sleep(1.0)
                    with contextlib.suppress(Exception):
                        await ensure_topics(self.settings, topics)
        finally:
            await memory.stop()
            await self.consumer.stop()

    async def _forgotten(self, memory: BrokerMemory, topics: Sequence[str]) -> bool:
        """If the broker restarted empty, read every assigned partition from its beginning
        (the relays republish what it lost; the inbox absorbs what was applied before)."""
        assert self.consumer is not None
        if not await memory.forgot():
            return False
        log.warning("consumer %s: the broker lost its memory; reading from the start", self.name)
        await ensure_topics(self.settings, topics)
        assigned = self.consumer.assignment()
        for tp in assigned:
            await self.consumer.seek_to_beginning(tp)
        if assigned:
            # Overwrite any position committed to the new broker from the old log (before
            # the group noticed), so a successor after a crash starts at the beginning too.
            await self.consumer.commit({tp: 0 for tp in assigned})
        # Marker last: if anything above fails, the next check does it all again.
        await memory.mark()
        return True

    async def _rewind(self) -> None:
        """Seek every assigned partition back to its committed offset (the first message not
        yet applied), or to the beginning when the group has none (a broker that lost its
        memory): what was applied meanwhile comes again and the inbox absorbs it."""
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            committed = await self.consumer.committed(tp)
            if committed is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)

    async def _report_lag(self) -> None:
        assert self.consumer is not None
        lag_by_topic: dict[str, int] = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            position = await self.consumer.position(tp)
            lag_by_topic[tp.topic] = lag_by_topic.get(tp.topic, 0) + max(0, high - position)
        for topic, lag in lag_by_topic.items():
            MESSAGE_QUEUE_SIZE.labels(f"{topic}:{self.name}").set(lag)


@dataclass
class ReplayReport:
    replayed: int
    failed: dict[int, str]  # dead letter id -> why it failed again


async def replay_dead_letters(
    db: Database, consumers: Sequence[EventConsumer], limit: int = 10_000
) -> ReplayReport:
    """Apply dead letters again through their consumer (after a fix), oldest first.

    The inbox still guards: an event that was applied in the meantime changes nothing. A
    replayed letter is marked ``replayed_at``; one that fails again stays, with its reason.
    """
    by_name = {consumer.name: consumer for consumer in consumers}
    async with db.read(may_lag=False) as conn:
        letters = (
            await conn.execute(
                select(dead_letters.c.id, dead_letters.c.consumer, dead_letters.c.payload)
                .where(dead_letters.c.replayed_at.is_(None))
                .order_by(dead_letters.c.id)
                .limit(limit)
            )
        ).all()
    replayed = 0
    failed: dict[int, str] = {}
    for letter_id, consumer_name, payload in letters:
        consumer = by_name.get(consumer_name)
        if consumer is None:
            failed[letter_id] = f"no consumer named {consumer_name} in this service"
            continue
        try:
            await consumer._apply([Envelope.from_bytes(payload.encode())])
        except Exception as exc:
            failed[letter_id] = f"{type(exc).__name__}: {exc}"[:500]
            continue

        async def mark(tx: Tx, letter_id: int = letter_id) -> None:
            await (await tx.main()).execute(
                dead_letters.update()
                .where(dead_letters.c.id == letter_id)
                .values(replayed_at=utcnow())
            )

        await db.run(mark)
        replayed += 1
    return ReplayReport(replayed, failed)
