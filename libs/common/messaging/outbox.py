"""Transactional outbox: the event row is written in the business transaction; a relay
publishes it and marks it.

The embedded broker keeps messages in memory, so the relay republishes rows when it starts
and whenever it sees the broker restarted (a partition's offsets went back), back to a
retention horizon; consumers absorb the duplicates through their inbox.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from weakref import WeakKeyDictionary

import orjson
from aiokafka import AIOKafkaProducer
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from libs.common.db.engine import Database, Tx
from libs.common.db.prepared import Prepared
from libs.common.db.sql import insert_ignore
from libs.common.messaging.envelope import Envelope
from libs.common.messaging.kafka import BrokerMemory, ensure_topics
from libs.common.metrics import MESSAGE_QUEUE_SIZE, MESSAGES_PUBLISHED, OUTBOX_REPUBLISHED
from libs.common.settings import ServiceSettings

log = logging.getLogger("tuike.outbox")

LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
# SQLite autoincrements only an INTEGER PRIMARY KEY.
AutoId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """Naive UTC, the form DATETIME columns hold on every dialect."""
    return datetime.now(UTC).replace(tzinfo=None)


outbox_metadata = MetaData()
outbox = Table(
    "outbox",
    outbox_metadata,
    Column("seq", AutoId, primary_key=True, autoincrement=True),
    Column("event_id", String(191), nullable=False, unique=True),
    Column("topic", String(128), nullable=False),
    Column("event_key", String(128), nullable=False),
    Column("payload", LongText, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("published_at", DateTime, nullable=True),
    # {field of data: digest} for the data fields stored apart, in outbox_part (NULL: none).
    Column("parts", Text, nullable=True),
    Index("ix_outbox_published", "published_at", "seq"),
)

# Big values that many events repeat (the ancestors of one parent, in every bind under it),
# stored once by content and put back into the payload by the relay (decision 0805).
outbox_part = Table(
    "outbox_part",
    outbox_metadata,
    Column("digest", String(64), primary_key=True),  # SHA-256 of the body, hex
    Column("body", LongText, nullable=False),
    Column("created_at", DateTime, nullable=False),
    # When an event last took this part, moved forward at most once per ``PART_USE_REFRESH``:
    # a part is pruned once nothing used it for longer than published rows are kept.
    Column("used_at", DateTime, nullable=True),
)

# A value shorter than this stays in the payload: a row of its own costs more than it saves.
PART_MIN_LENGTH = 1024
# A part's ``used_at`` is moved forward when an event takes it and it is older than this; a
# process remembers a part it wrote for as long. So every row that names a part was written
# at most twice this after the part's ``used_at`` (outbox_pruning.py relies on it).
PART_USE_REFRESH = timedelta(hours=1)

# The mark of a row not published yet: a timestamp of the same size as a real one, not NULL,
# so marking a row changes no value's size. SQLite then rewrites the row in place, only the
# page that holds the column, where a NULL turned into a timestamp made it copy the whole
# payload to new overflow pages (9 log frames for a 14 KB event instead of 2; decision 0804).
# NULL still means "not published": rows written by earlier versions.
NOT_PUBLISHED = datetime(1970, 1, 1)


# The two kinds of rows the relay has still to publish: marked, and written before the mark.
_PENDING = (outbox.c.published_at == NOT_PUBLISHED, outbox.c.published_at.is_(None))


def unpublished() -> ColumnElement[bool]:
    """Rows the relay has still to publish."""
    return or_(*_PENDING)


# The columns ``whole_rows`` takes.
ROW = (outbox.c.seq, outbox.c.topic, outbox.c.event_key, outbox.c.payload, outbox.c.parts)


async def pending_rows(conn: AsyncConnection, limit: int) -> list[tuple[int, str, str, str]]:
    """The first ``limit`` unpublished rows by seq: ``(seq, topic, key, payload)``, payloads
    whole. Marked rows and NULL ones are read apart, each in the order of the
    (published_at, seq) index, then merged: one query with an OR would sort every pending
    row on each poll."""
    found: list[Any] = []
    for condition in _PENDING:
        found += (
            await conn.execute(select(*ROW).where(condition).order_by(outbox.c.seq).limit(limit))
        ).all()
    found.sort(key=lambda row: int(row[0]))
    return await whole_rows(conn, found[:limit])


async def whole_rows(conn: AsyncConnection, rows: Sequence[Any]) -> list[tuple[int, str, str, str]]:
    """Outbox rows read as ``ROW``, given back as ``(seq, topic, key, payload)`` with the
    values stored apart put back into their payloads: the events as they are published."""
    parts_of = [orjson.loads(row[4]) if row[4] else None for row in rows]
    wanted = {digest for parts in parts_of if parts for digest in parts.values()}
    bodies: dict[str, str] = {}
    if wanted:
        found = await conn.execute(
            select(outbox_part.c.digest, outbox_part.c.body).where(
                outbox_part.c.digest.in_(sorted(wanted))
            )
        )
        bodies = {str(digest): str(body) for digest, body in found}
    return [
        (
            int(row[0]),
            str(row[1]),
            str(row[2]),
            _joined(str(row[3]), parts, bodies) if parts else str(row[3]),
        )
        for row, parts in zip(rows, parts_of, strict=True)
    ]


def _joined(payload: str, parts: Mapping[str, str], bodies: Mapping[str, str]) -> str:
    # orjson wrote the payload (Envelope.to_bytes), so reading and writing it again with orjson
    # gives the same bytes: it writes no integer past 64 bits, and a float's shortest form
    # reads back as the same float.
    envelope = orjson.loads(payload)
    for field, digest in parts.items():
        if digest not in bodies:
            # Written with the row (or known to be there) and kept while a row may name it
            # (outbox_pruning.py): a bug, not a state.
            raise RuntimeError(f"outbox part {digest} of {envelope['id']} is missing")
        envelope["data"][field] = bodies[digest]
    return orjson.dumps(envelope).decode()


async def mark_published(conn: AsyncConnection, seqs: Sequence[int]) -> None:
    await conn.execute(update(outbox).where(outbox.c.seq.in_(seqs)).values(published_at=utcnow()))


class _PartsWritten:
    """The parts one process has committed, by body, newest last: an event that repeats one
    (every bind under one deep parent repeats its ancestors) takes its digest without hashing
    the body again and writes no part row. Only committed parts are remembered, and each for
    ``PART_USE_REFRESH``: then the next event that takes it writes it again (moving its
    ``used_at`` forward), so a part in use is never old enough to be pruned."""

    SIZE = 128

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._digests: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, body: str) -> str | None:
        known = self._digests.get(body)
        if known is None:
            return None
        digest, remembered_at = known
        if self._clock() - remembered_at >= PART_USE_REFRESH.total_seconds():
            del self._digests[body]
            return None
        self._digests.move_to_end(body)
        return digest

    def add(self, parts: Mapping[str, str]) -> None:
        now = self._clock()
        for digest, body in parts.items():
            self._digests[body] = (digest, now)
            self._digests.move_to_end(body)
        while len(self._digests) > self.SIZE:
            self._digests.popitem(last=False)


# One memory per database a process writes to (tests open many, one after the other).
_PARTS_WRITTEN: WeakKeyDictionary[Database, _PartsWritten] = WeakKeyDictionary()


def _rows(
    topic: str,
    events: Sequence[Envelope],
    shared: Sequence[str],
    now: datetime,
    written: _PartsWritten | None,
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The outbox rows of ``events`` and the parts they need that are not known to be written
    (digest → body)."""
    rows, parts = [], {}
    for event in events:
        apart: dict[str, str] = {}
        for field in shared:
            value = event.data.get(field)
            if isinstance(value, str) and len(value) >= PART_MIN_LENGTH:
                digest = written.get(value) if written is not None else None
                if digest is None:
                    digest = hashlib.sha256(value.encode()).hexdigest()
                    parts[digest] = value
                apart[field] = digest
        data = {**event.data, **dict.fromkeys(apart)} if apart else None
        rows.append(
            {
                "event_id": event.id,
                "topic": topic,
                "event_key": event.key,
                "payload": event.to_bytes(data).decode(),
                "created_at": now,
                "published_at": NOT_PUBLISHED,
                "parts": orjson.dumps(apart).decode() if apart else None,
            }
        )
    return rows, parts


# Prepared: a process that binds under more deep parents than it remembers runs it per event.
_MOVE_USE_FORWARD = Prepared(
    update(outbox_part)
    .where(
        outbox_part.c.digest.in_(bindparam("digests", expanding=True)),
        or_(
            outbox_part.c.used_at < bindparam("stale_before", type_=DateTime()),
            outbox_part.c.used_at.is_(None),
        ),
    )
    .values(used_at=bindparam("now", type_=DateTime()))
)


async def _write(
    conn: AsyncConnection, rows: list[dict[str, Any]], parts: Mapping[str, str], now: datetime
) -> int:
    if parts:
        digests = sorted(parts)
        await insert_ignore(
            conn,
            outbox_part,
            [{"digest": d, "body": parts[d], "created_at": now, "used_at": now} for d in digests],
        )
        # A part that was there already: its use moves forward, unless it moved lately (then
        # nothing is written).
        await _MOVE_USE_FORWARD.execute(
            conn, {"digests": digests, "stale_before": now - PART_USE_REFRESH, "now": now}
        )
    return await insert_ignore(conn, outbox, rows)


async def add(
    conn: AsyncConnection,
    topic: str,
    events: Sequence[Envelope],
    shared: Sequence[str] = (),
) -> int:
    """Write events to the outbox in the caller's transaction; an event id already in the
    outbox is skipped (the same fact is never queued twice). Returns rows written.

    A string in ``data`` under one of the ``shared`` names, ``PART_MIN_LENGTH`` long or
    longer, is stored once by its digest in ``outbox_part`` and left out of the row; the
    relay puts it back, so what is published is the whole event (decision 0805)."""
    now = utcnow()
    rows, parts = _rows(topic, events, shared, now, None)
    return await _write(conn, rows, parts, now)


async def publish(tx: Tx, topic: str, *events: Envelope, shared: Sequence[str] = ()) -> None:
    """Queue events on ``topic`` in this transaction and wake the relay after the commit;
    ``shared``: data fields whose big values many events repeat (see ``add``). Parts this
    process has already committed are not written again."""
    now = utcnow()
    written = _PARTS_WRITTEN.get(tx.db) if shared else None
    if shared and written is None:
        written = _PARTS_WRITTEN[tx.db] = _PartsWritten()
    rows, parts = _rows(topic, events, shared, now, written)
    await _write(await tx.main(), rows, parts, now)
    if parts and written is not None:
        remember = written

        async def committed() -> None:
            remember.add(parts)

        tx.after_commit(committed)
    for listener in tx.db.outbox_listeners:
        tx.after_commit(listener)


class OutboxRelay:
    """Publishes outbox rows in order and marks them published."""

    def __init__(
        self,
        db: Database,
        producer: AIOKafkaProducer,
        settings: ServiceSettings,
        topics: Sequence[str],
    ) -> None:
        self.db = db
        self.producer = producer
        self.settings = settings
        self.topics = list(topics)
        self.service = settings.service_name
        self._wake = asyncio.Event()
        # Highest offset seen per (topic, partition): an offset lower than this means the
        # broker lost its log (the embedded broker restarted), so we publish again.
        self._high_offsets: dict[tuple[str, int], int] = {}
        self._check_topics = True
        # Set when the broker lost what we published, until a whole republish went through;
        # a relay that starts owes one too (the broker may have lost an earlier process's).
        self._republish_owed = True
        # Checked before each batch: a broker that restarted empty gets the horizon again
        # before any new row.
        self.memory = BrokerMemory(settings, f"outbox.{self.service}", self.topics[0])
        db.outbox_listeners.append(self.wake)

    async def wake(self) -> None:
        self._wake.set()

    async def backlog(self) -> int:
        async with self.db.read(may_lag=False) as conn:
            count = await conn.scalar(select(func.count()).select_from(outbox).where(unpublished()))
        return int(count or 0)

    async def _send(self, rows: Sequence[tuple[int, str, str, str]]) -> bool:
        """Send rows and wait for the acks; True if the broker looks restarted."""
        futures = [
            await self.producer.send(topic, value=payload.encode(), key=key.encode())
            for _, topic, key, payload in rows
        ]
        restarted = False
        for (_, topic, _key, _payload), future in zip(rows, futures, strict=True):
            metadata = await future
            slot = (topic, metadata.partition)
            if metadata.offset < self._high_offsets.get(slot, -1):
                restarted = True
            self._high_offsets[slot] = max(self._high_offsets.get(slot, -1), metadata.offset)
        return restarted

    async def publish_pending(self) -> int:
        """Publish one batch of unpublished rows; returns how many."""
        async with self.db.read(may_lag=False) as conn:
            rows = await pending_rows(conn, self.settings.outbox_batch_size)
        if not rows:
            return 0
        restarted = await self._send(rows)
        seqs = [r[0] for r in rows]

        async def mark(tx: Tx) -> None:
            await mark_published(await tx.main(), seqs)

        await self.db.run(mark)
        for row in rows:
            MESSAGES_PUBLISHED.labels(self.service, row[1]).inc()
        if restarted:
            log.warning("broker offsets went back: republishing the outbox horizon")
            self._republish_owed = True
            await self.republish_horizon()
        return len(rows)

    async def republish_horizon(self) -> int:
        """Publish again every row published within the horizon (in order). Only a
        republish that went through to the end pays what a lost broker memory owes."""
        await ensure_topics(self.settings, self.topics)
        since = utcnow() - timedelta(seconds=self.settings.outbox_republish_horizon_seconds)
        last_seq = 0
        total = 0
        while True:
            async with self.db.read(may_lag=False) as conn:
                found = await conn.execute(
                    select(*ROW)
                    .where(
                        outbox.c.published_at > NOT_PUBLISHED,
                        outbox.c.created_at >= since,
                        outbox.c.seq > last_seq,
                    )
                    .order_by(outbox.c.seq)
                    .limit(self.settings.outbox_batch_size)
                )
                rows = await whole_rows(conn, found.all())
            if not rows:
                break
            self._high_offsets.clear()
            await self._send(rows)
            last_seq = rows[-1][0]
            total += len(rows)
        self._republish_owed = False
        if total:
            OUTBOX_REPUBLISHED.labels(self.service).inc(total)
            log.info("republished %d outbox rows", total)
        return total

    async def prune(self) -> None:
        """Delete published rows past the keep period and parts no event takes any more."""
        # Imported here: the pruning module reads this module's tables.
        from libs.common.messaging.outbox_pruning import keep_published, prune_outbox

        await prune_outbox(self.db, keep_published(self.settings))

    async def _recover_if_forgotten(self) -> None:
        """Republish the horizon *before* any new row: an aggregate's earlier events (an
        order.paid the broker lost) must not come after its later ones (a refund)."""
        if await self.memory.forgot():
            log.warning("the broker lost its memory: republishing the outbox horizon")
            # Marker first: a restart during the republish is then seen next time.
            await ensure_topics(self.settings, self.topics)
            await self.memory.mark()
            self._republish_owed = True
        if self._republish_owed:
            # Also after a republish that failed half-way (a broker not ready yet): the
            # marker is there now, so only this debt remembers the events still missing.
            await self.republish_horizon()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._run(stop)
        finally:
            await self.memory.stop()

    async def _run(self, stop: asyncio.Event) -> None:
        first = True
        backlog_counted = 0.0
        pruned_at = -float("inf")  # the first idle moment prunes
        while not stop.is_set():
            try:
                if first:
                    await ensure_topics(self.settings, self.topics)
                    await self.memory.mark()
                    first = False
                    self._check_topics = False
                await self._recover_if_forgotten()
                if self._check_topics:
                    await ensure_topics(self.settings, self.topics)
                    self._check_topics = False
                published = await self.publish_pending()
                # Counted when the relay has caught up (so a drained outbox shows 0) and at
                # most once a second while it is busy: under load a count after every small
                # batch was a tenth of the relay's CPU.
                now = asyncio.get_running_loop().time()
                if not published or now - backlog_counted >= 1.0:
                    backlog_counted = now
                    MESSAGE_QUEUE_SIZE.labels(f"outbox:{self.service}").set(await self.backlog())
                if published:
                    continue
                if now - pruned_at >= self.settings.outbox_prune_interval_seconds:
                    pruned_at = now
                    await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay step failed; retrying")
                # The broker may have restarted empty: recreate the topics before resending;
                # the lost marker (or the offsets going back) then triggers the republish.
                self._check_topics = True
                await asyncio.sleep(1.0)
            self._wake.clear()
            try:
                await asyncio.wait_for(
                    self._wake.wait(), timeout=self.settings.outbox_poll_seconds * 20
                )
            except TimeoutError:
                pass
