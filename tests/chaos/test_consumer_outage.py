"""A consumer whose database is away keeps its messages: it neither dead-letters them (they
are good; the database is not) nor skips them (getmany() had moved past them, and the next
offset commit would have made them lost). Found by the chaos harness on MariaDB: stats missed
order.paid events after a database cut."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from libs.common.db.engine import Database, Tx
from libs.common.db.migrations import migrate
from libs.common.messaging.consumer import EventConsumer, Subscription, dead_letters
from libs.common.messaging.envelope import Envelope
from tests.common.sample_events import sample_event
from tests.common.test_messaging import (
    MIGRATIONS,
    Harness,
    _apply,
    _effect_counts,
    _eventually,
)


class DatabaseAway:
    """A handler in front of the real one that fails as a lost MySQL connection does
    (error 2003, retryable) for its first ``failures`` calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def __call__(self, tx: Tx, events: Sequence[Envelope]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise OperationalError(
                "INSERT ...", {}, Exception(2003, "Can't connect to MySQL server")
            )
        await _apply(tx, events)


async def test_an_outage_longer_than_the_retries_loses_nothing(
    db: Database, database_url: str, broker: str
) -> None:
    await migrate(db, MIGRATIONS)
    harness = Harness(db, broker)
    await harness.start()
    # A second consumer group on the same topic whose database is "away" for longer than
    # all its retries: Database.run tries twice here, the consumer twice per message after
    # the batch, so 10 failures outlast them.
    impatient = Database(database_url, max_attempts=2)
    away = DatabaseAway(failures=10)
    consumer = EventConsumer(
        Subscription("outage", [harness.topic], away),
        impatient,
        harness.producer,
        harness.settings,
    )
    task = asyncio.create_task(consumer.run(harness.stop))
    try:
        events = [sample_event(n) for n in range(3)]
        await harness.emit(*events)

        async def each_applied_twice() -> bool:
            # once by the healthy consumer, once by the one that waited out the outage
            counts = await _effect_counts(db)
            return counts == {e.id: 2 for e in events}

        await _eventually(each_applied_twice, seconds=60)
        await asyncio.sleep(1.0)
        assert await each_applied_twice()
        assert away.calls > away.failures
        async with db.read(may_lag=False) as conn:
            dead = (
                await conn.execute(
                    select(dead_letters.c.event_id).where(dead_letters.c.topic == harness.topic)
                )
            ).all()
        assert dead == []
    finally:
        harness.stop.set()
        await asyncio.wait([task], timeout=10)
        await harness.close()
        await impatient.dispose()
