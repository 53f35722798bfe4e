"""After the in-memory broker restarts empty, the relay republishes what it lost before any
new event, and also when nothing new is written. Found by the chaos harness: an order's
refund, written while the broker was down, reached the commission service before the
republished order.paid, so the refund was never reversed."""

from __future__ import annotations

import asyncio
import secrets

from aiokafka import AIOKafkaConsumer

from libs.common.db.engine import Database
from libs.common.db.migrations import migrate
from libs.common.messaging.envelope import Envelope, make_event
from libs.common.messaging.kafka import ensure_topics
from tests.common.test_messaging import MIGRATIONS, Harness, restartable_broker  # noqa: F401


def _fact(kind: str, order: str) -> Envelope:
    return make_event(kind, order, key=order, data={"order": order}, source="test")


async def _ids_on_the_topic(bootstrap: str, topic: str, want: int) -> list[str]:
    """Event ids in log order of the key's partition (all our events share one key)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"reader-{secrets.token_hex(3)}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    ids: list[str] = []
    try:
        deadline = asyncio.get_running_loop().time() + 30
        while len(ids) < want and asyncio.get_running_loop().time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                ids.extend(Envelope.from_bytes(r.value or b"").id for r in records)
    finally:
        await consumer.stop()
    return ids


async def test_lost_events_come_back_before_new_ones_and_without_new_ones(
    db: Database,
    restartable_broker,  # type: ignore[no-untyped-def]  # noqa: F811
) -> None:
    bootstrap, start_broker, stop_broker = restartable_broker
    await migrate(db, MIGRATIONS)
    harness = Harness(db, bootstrap)
    await harness.start()
    try:
        order = secrets.token_hex(4)
        paid = _fact("order.paid", order)
        await harness.emit(paid)
        assert await _ids_on_the_topic(bootstrap, harness.topic, 1) == [paid.id]

        # The broker restarts empty; nothing new is written: the relay notices by itself.
        stop_broker()
        start_broker()
        await ensure_topics(harness.settings, [harness.topic])
        assert await _ids_on_the_topic(bootstrap, harness.topic, 1) == [paid.id]

        # It restarts again, and the refund is written while it is down: on the partition the
        # republished order.paid comes first, then the refund.
        stop_broker()
        refunded = _fact("order.refunded", order)
        await harness.emit(refunded)
        await asyncio.sleep(0.5)
        start_broker()
        ids = await _ids_on_the_topic(bootstrap, harness.topic, 2)
        assert ids[:2] == [paid.id, refunded.id]
    finally:
        await harness.close()
