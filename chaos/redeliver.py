"""Every event twice, and out of order: a chaos consumer reads the event topics and produces
each event it sees once more, in shuffled batches.

A copy keeps its key, so it lands on its aggregate's partition after the original: Kafka's
per-partition order, which the contract relies on (ARCHITECTURE §8), still holds for first
deliveries, while consumers see each event a second time, late, after newer events of the
same aggregate and shuffled against other aggregates' events. The broker restarts add more
duplicates on top (the relays republish their horizon).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from libs.common.messaging.envelope import (
    COMMISSION_EVENTS,
    COMMISSION_SETTLE,
    ORDER_EVENTS,
    USER_EVENTS,
)

log = logging.getLogger("tuike.chaos.redeliver")

TOPICS = (USER_EVENTS, ORDER_EVENTS, COMMISSION_EVENTS, COMMISSION_SETTLE)


class Redeliverer:
    def __init__(self, bootstrap: str, rng: random.Random, group: str) -> None:
        self.bootstrap = bootstrap
        self.rng = rng
        self.group = group
        self.seen: set[str] = set()
        self.redelivered = 0
        self._pending: list[tuple[str, bytes | None, bytes]] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Keep going through broker restarts until ``stop``."""
        while not stop.is_set():
            try:
                await self._session(stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("redeliverer reconnecting after %s", exc)
                await asyncio.sleep(1.0)

    async def _session(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            *TOPICS,
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            session_timeout_ms=10000,
            heartbeat_interval_ms=1000,
            rebalance_timeout_ms=10000,
        )
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, enable_idempotence=False, linger_ms=5
        )
        await consumer.start()
        try:
            await producer.start()
            try:
                while not stop.is_set():
                    batches = await consumer.getmany(timeout_ms=300, max_records=500)
                    for records in batches.values():
                        for record in records:
                            self._note(record.topic, record.key, record.value or b"")
                    if self._pending and self.rng.random() < 0.5:
                        await self._flush(producer)
            finally:
                with contextlib.suppress(Exception):
                    await self._flush(producer)
                await producer.stop()
        finally:
            await consumer.stop()

    def _note(self, topic: str, key: bytes | None, value: bytes) -> None:
        try:
            event_id = str(orjson.loads(value)["id"])
        except Exception:
            return
        if event_id in self.seen:
            return  # a copy (ours or a republish): the original is what we double
        self.seen.add(event_id)
        self._pending.append((topic, key, value))

    async def _flush(self, producer: AIOKafkaProducer) -> None:
        batch, self._pending = self._pending, []
        self.rng.shuffle(batch)
        try:
            futures = [
                await producer.send(topic, value=value, key=key) for topic, key, value in batch
            ]
            for future in futures:
                await future
        except Exception:
            self._pending = batch + self._pending  # try again on the next session
            raise
        self.redelivered += len(batch)
