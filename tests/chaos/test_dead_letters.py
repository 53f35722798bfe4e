"""The whole dead-letter loop: a poison message ends in ``<topic>.dlq`` (with its reason in a
header) and in the ``dead_letters`` table, is counted in ``promoter_dlq_messages_total``,
and after a fix ``python -m services.<name> replay-dead-letters`` applies it once."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer
from prometheus_client import REGISTRY
from sqlalchemy import select

from libs.common.db.engine import Database
from libs.common.db.migrations import migrate
from libs.common.messaging.consumer import dead_letters
from libs.common.messaging.envelope import ORDER_EVENTS, dlq_topic, make_event
from libs.common.messaging.outbox import utcnow
from services.stats.models import stats_orders
from tests.common.sample_events import sample_event
from tests.common.test_messaging import MIGRATIONS, Harness, _eventually


def _dlq_count(consumer: str, topic: str) -> float:
    labels = {"consumer": consumer, "topic": topic}
    return REGISTRY.get_sample_value("promoter_dlq_messages_total", labels) or 0.0


async def test_a_poison_message_is_dead_lettered_with_its_reason_and_counted(
    db: Database, broker: str
) -> None:
    await migrate(db, MIGRATIONS)
    harness = Harness(db, broker)
    await harness.start()
    try:
        before = _dlq_count(harness.consumer.name, harness.topic)
        bad = sample_event(1, poison=True)
        await harness.emit(bad)

        async def counted() -> bool:
            return _dlq_count(harness.consumer.name, harness.topic) == before + 1

        await _eventually(counted)
        async with db.read(may_lag=False) as conn:
            reason = await conn.scalar(
                select(dead_letters.c.reason).where(dead_letters.c.event_id == bad.id)
            )
        assert reason == "poison: this event can never be applied"

        reader = AIOKafkaConsumer(
            dlq_topic(harness.topic),
            bootstrap_servers=broker,
            group_id=f"dlq-reader-{secrets.token_hex(3)}",
            auto_offset_reset="earliest",
        )
        await reader.start()
        try:
            records = []
            for _ in range(20):
                batches = await reader.getmany(timeout_ms=500)
                records += [r for rs in batches.values() for r in rs]
                if records:
                    break
        finally:
            await reader.stop()
        assert len(records) == 1
        headers = dict(records[0].headers)
        assert headers["reason"] == b"poison: this event can never be applied"
        assert headers["consumer"] == harness.consumer.name.encode()
    finally:
        await harness.close()


def _paid_event(order_id: int, promoter_id: int) -> bytes:
    now = datetime.now(UTC).isoformat()
    event = make_event(
        "order.paid",
        order_id,
        key=order_id,
        data={
            "order_id": str(order_id),
            "platform": "chaos",
            "order_no": f"dl-{order_id}",
            "buyer_user_id": str(order_id + 1),
            "currency": "CNY",
            "promoter_id": str(promoter_id),
            "beneficiaries": [{"level": 1, "user_id": str(promoter_id)}],
            "attribution_status": "resolved",
            "items": [
                {
                    "item_id": str(order_id + 2),
                    "sku": "dl-sku",
                    "category": "books",
                    "quantity": 1,
                    "unit_price_amount": 12_300,
                    "paid_amount": 12_300,
                }
            ],
            "shipping_amount": 0,
            "status": "paid",
            "created_at": now,
            "paid_at": now,
        },
        source="order",
    )
    return event.to_bytes()


def _stats_command(
    command: str, database_url: str, redis_url: str, broker: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TUIKE_SERVICE_NAME": "stats",
        "TUIKE_DATABASE_URL": database_url,
        "TUIKE_REDIS_URL": redis_url,
        "TUIKE_REDIS_KEY_PREFIX": f"tuike-test-{secrets.token_hex(3)}:",
        "TUIKE_KAFKA_BOOTSTRAP_SERVERS": broker,
        "TUIKE_NODE_ID": "901",
        "TUIKE_LOG_LEVEL": "WARNING",
    }
    return subprocess.run(
        [sys.executable, "-m", "services.stats", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_the_replay_command_applies_a_dead_letter_once_after_the_fix(
    database_url: str, redis_url: str, broker: str
) -> None:
    migrated = await asyncio.to_thread(_stats_command, "migrate", database_url, redis_url, broker)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    order_id, promoter_id = 7_000_000_001, 7_000_000_100
    db = Database(database_url)
    try:
        # What the stats consumer left when it could not apply order.paid (the bug, since
        # fixed): written straight into its table.
        async with db.primary.begin() as conn:
            await conn.execute(
                dead_letters.insert().values(
                    consumer="stats.stats",
                    topic=ORDER_EVENTS,
                    partition=0,
                    offset=41,
                    event_id=f"order.paid:{order_id}",
                    payload=_paid_event(order_id, promoter_id).decode(),
                    reason="failed 5 times: KeyError: 'promoter'",
                    created_at=utcnow(),
                )
            )
        first = await asyncio.to_thread(
            _stats_command, "replay-dead-letters", database_url, redis_url, broker
        )
        assert first.returncode == 0, first.stdout + first.stderr
        assert "replayed 1 dead letters; 0 failed again" in first.stdout
        again = await asyncio.to_thread(
            _stats_command, "replay-dead-letters", database_url, redis_url, broker
        )
        assert "replayed 0 dead letters; 0 failed again" in again.stdout
        async with db.read(may_lag=False) as conn:
            orders = (
                await conn.execute(
                    select(stats_orders.c.promoter_id, stats_orders.c.paid_amount).where(
                        stats_orders.c.order_id == order_id
                    )
                )
            ).all()
            replayed_at = await conn.scalar(select(dead_letters.c.replayed_at))
        assert [tuple(row) for row in orders] == [(promoter_id, 12_300)]
        assert replayed_at is not None
    finally:
        await db.dispose()
