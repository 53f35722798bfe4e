"""Event handlers of the stats service: decode, call the same service functions as the API."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from libs.common.db.engine import Database, Tx
from libs.common.diagnostics import probe_subscription
from libs.common.events import CommissionsChanged, OrderData, OrderRefunded, UserBound
from libs.common.messaging.consumer import (
    BatchHandler,
    PoisonMessage,
    Subscription,
    record_new,
)
from libs.common.messaging.envelope import (
    COMMISSION_EVENTS,
    ORDER_EVENTS,
    USER_EVENTS,
    Envelope,
)
from libs.common.metrics import MESSAGE_QUEUE_SIZE
from libs.common.runtime import Runtime
from services.stats.ingest import apply_event_data
from services.stats.service import StatsStores
from services.stats.team import apply_team_queue, team_queue_size

DATA_MODELS: dict[str, type[BaseModel]] = {
    "order.paid": OrderData,
    "order.refunded": OrderRefunded,
    "commission.accrued": CommissionsChanged,
    "commission.reversed": CommissionsChanged,
    "commission.settled": CommissionsChanged,
    "user.bound": UserBound,
    "user.rebound": UserBound,
    "user.moved": UserBound,
}
CONSUMER_NAME = "stats.stats"
TEAM_QUEUE = MESSAGE_QUEUE_SIZE.labels("team_queue:stats")


def decode(events: Sequence[Envelope]) -> list[tuple[str, Any]]:
    decoded = []
    for event in events:
        try:
            decoded.append((event.type, DATA_MODELS[event.type].model_validate(event.data)))
        except ValidationError as exc:
            raise PoisonMessage(f"{event.id}: {exc}") from exc
    return decoded


def stats_handler(stores: StatsStores) -> BatchHandler:
    async def handle(tx: Tx, events: Sequence[Envelope]) -> None:
        await apply_event_data(tx, stores, decode(events))

    return handle


async def consume(
    db: Database, stores: StatsStores, events: Sequence[Envelope], consumer: str = CONSUMER_NAME
) -> int:
    """What the consumer does with one micro-batch: inbox + effects in one transaction.
    Returns how many events were new (tests and the benchmark call it directly)."""
    handle = stats_handler(stores)

    async def work(tx: Tx) -> int:
        fresh = [e for e in await record_new(tx, consumer, events) if e.type in DATA_MODELS]
        if fresh:
            await handle(tx, fresh)
        return len(fresh)

    return await db.run(work)


def subscriptions(runtime: Runtime) -> Sequence[Subscription]:
    return [
        probe_subscription(),
        Subscription(
            name="stats",
            topics=[USER_EVENTS, ORDER_EVENTS, COMMISSION_EVENTS],
            handler=stats_handler(StatsStores.of(runtime)),
            event_types=frozenset(DATA_MODELS),
        ),
    ]


def tasks(runtime: Runtime) -> Sequence[Any]:
    async def team_fan_out(stop: asyncio.Event) -> None:
        """Carry queued facts to the ancestors, in batches, while the service runs."""
        batches = 0
        while not stop.is_set():
            applied, _ = await apply_team_queue(runtime.db)
            if applied:
                batches += 1
                if batches % 20 == 1:  # a count now and then while a backlog drains
                    TEAM_QUEUE.set(await team_queue_size(runtime.db))
                continue
            TEAM_QUEUE.set(0)
            try:
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            except TimeoutError:
                pass

    return [team_fan_out]
