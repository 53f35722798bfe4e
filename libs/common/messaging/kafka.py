"""aiokafka plumbing: producer and topic creation with the settings of §2."""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.structs import OffsetAndMetadata
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


class BrokerMemory:
    """Tells whether the broker lost its memory (the embedded in-memory broker restarted).

    A marker offset committed for a consumer group of this process alone: a restarted
    broker has forgotten it, whoever wrote to the topics since. Offsets alone cannot tell:
    after a restart other producers may refill a partition past any offset we remember, so
    a relay that waits for "offsets went back" misses it, and a consumer that kept its
    position would skip the start of the new log. ``settings.broker_restart_detection``
    turns it off (a durable Kafka never forgets; the check then costs nothing).
    """

    def __init__(self, settings: CommonSettings, owner: str, topic: str) -> None:
        self.settings = settings
        self.group = f"tuike-epoch.{owner}.{secrets.token_hex(6)}"
        self.tp = TopicPartition(topic, 0)
        self._client: AIOKafkaConsumer | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.broker_restart_detection

    async def mark(self) -> None:
        """Leave the marker (the topic must exist)."""
        if not self.enabled:
            return
        if self._client is None:
            client = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap_servers,
                group_id=self.group,
                enable_auto_commit=False,
            )
            await start_with_retry(client)
            client.assign([self.tp])
            self._client = client
        await self._client.commit({self.tp: OffsetAndMetadata(0, "")})

    async def forgot(self) -> bool:
        """True when the marker is gone: the broker restarted empty since ``mark``."""
        if self._client is None:
            return False
        return await self._client.committed(self.tp) is None

    async def stop(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.stop()
            self._client = None
