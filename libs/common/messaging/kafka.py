"""aiokafka plumbing: producer and topic creation with the settings of §2."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from tenacity import AsyncRetrying, stop_after_delay, wait_exponential

from libs.common.settings import CommonSettings

log = logging.getLogger("tuike.kafka")


def make_producer(settings: CommonSettings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_idempotence=settings.kafka_enable_idempotence,
        acks="all",
        linger_ms=2,
        request_timeout_ms=10000,
        max_batch_size=256 * 1024,
    )


async def ensure_topics(settings: CommonSettings, topics: Iterable[str]) -> None:
    """Create the topics that are missing (idempotent; a broker that restarted empty gets
    them back)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=10000
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in topics if t not in existing]
        if wanted:
            try:
                await admin.create_topics(
                    [
                        NewTopic(
                            name,
                            num_partitions=settings.kafka_topic_partitions,
                            replication_factor=settings.kafka_topic_replication,
                        )
                        for name in wanted
                    ]
                )
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


async def start_with_retry(component: object, seconds: float = 60) -> None:
    """Start an aiokafka client, retrying while the broker comes up."""
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(seconds),
        wait=wait_exponential(multiplier=0.1, max=2),
        reraise=True,
    ):
        with attempt:
            await component.start()  # type: ignore[attr-defined]
