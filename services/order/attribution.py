"""The attribution snapshot (ARCHITECTURE §5): asked of the user service once, at intake.

When the user service cannot answer, the order is stored with attribution ``pending`` and
:func:`resolve_pending` (a background task in every order process) asks again with back-off
until it answers. The snapshot is written by a guarded update (``WHERE
attribution_status='pending'``), so however many processes retry, an order is attributed
once; the events held back meanwhile (paid, refunded, completed) are published then.
The user service is always called outside a transaction (``db.run`` retries its function).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import orjson
from sqlalchemy import or_, select, update

from libs.common.db.engine import Database, Tx
from libs.common.errors import BadRequest
from libs.common.ids import SHARD_COUNT, shard_of
from libs.common.messaging.outbox import utcnow
from services.order import publishing
from services.order.intake import AttributionOutcome
from services.order.models import NONE, PENDING, RESOLVED, orders
from services.order.records import load_in_tx
from services.order.user_client import (
    Attribution,
    UnknownBuyer,
    UserServiceClient,
    UserServiceUnavailable,
)

log = logging.getLogger("tuike.order.attribution")


async def attribute_at_intake(
    client: UserServiceClient, buyer_user_id: int, promoter_code: str | None, levels: int
) -> AttributionOutcome:
    """Ask the user service; an unknown buyer is a 400 ``order.unknown_buyer`` (nothing is
    stored), an unreachable service a ``pending`` outcome (the order is still accepted)."""
    try:
        return AttributionOutcome(await client.attribution(buyer_user_id, promoter_code, levels))
    except UnknownBuyer:
        raise BadRequest(
            f"buyer {buyer_user_id} is not a Tuike user; register them first",
            code="order.unknown_buyer",
            details={"buyer_user_id": str(buyer_user_id)},
        ) from None
    except UserServiceUnavailable as exc:
        log.warning("user service unavailable at intake, attribution pending: %s", exc)
        return AttributionOutcome(None)


def retry_delay(attempts: int, max_seconds: float) -> timedelta:
    """Back-off of a pending attribution: 1 s, 2 s, 4 s ... up to ``max_seconds``."""
    return timedelta(seconds=min(max_seconds, 2.0 ** max(0, attempts - 1)))


async def record_snapshot(tx: Tx, order_id: int, attribution: Attribution | None) -> bool:
    """Write the snapshot of a pending order (None = the buyer is unknown: nobody earns);
    True if this call did it. Then publish what waited for it."""
    table = orders.for_id(order_id)
    status = NONE if attribution is None or not attribution.beneficiaries else RESOLVED
    result = await (await tx.shard(shard_of(order_id))).execute(
        update(table)
        .where(table.c.id == order_id, table.c.attribution_status == PENDING)
        .values(
            attribution_status=status,
            promoter_id=attribution.promoter_id if attribution else None,
            beneficiaries=orjson.dumps(attribution.beneficiaries if attribution else []).decode(),
            attribution_next_at=None,
        )
    )
    if not result.rowcount:
        return False
    order = await load_in_tx(tx, order_id)
    await publishing.publish_held_back(tx, order)
    return True


async def _postpone(db: Database, order_id: int, max_backoff: float) -> None:
    async def work(tx: Tx) -> None:
        table = orders.for_id(order_id)
        conn = await tx.shard(shard_of(order_id))
        attempts = (
            await conn.execute(select(table.c.attribution_attempts).where(table.c.id == order_id))
        ).scalar_one()
        await conn.execute(
            update(table)
            .where(table.c.id == order_id, table.c.attribution_status == PENDING)
            .values(
                attribution_attempts=attempts + 1,
                attribution_next_at=utcnow() + retry_delay(attempts + 1, max_backoff),
            )
        )

    await db.run(work)


async def resolve_pending(
    db: Database,
    client: UserServiceClient,
    levels: int,
    *,
    max_backoff: float = 60.0,
    now: datetime | None = None,
    batch: int = 100,
    concurrency: int = 8,
) -> int:
    """One pass over the shards: ask again for every pending order that is due; returns how
    many got their snapshot. The user service is asked about a shard's due orders
    concurrently (``concurrency`` at once); an order it could not answer for is postponed
    with back-off, and the pass stops there (the service is down: the rest would fail too)."""
    now = now or utcnow()
    resolved = 0
    gate = asyncio.Semaphore(concurrency)

    async def ask(buyer_user_id: int, promoter_code: str | None) -> Attribution | str | None:
        async with gate:
            try:
                return await client.attribution(buyer_user_id, promoter_code, levels)
            except UnknownBuyer:
                return None
            except UserServiceUnavailable as exc:
                return str(exc)

    for shard in range(SHARD_COUNT):
        table = orders.for_shard(shard)
        async with db.read_shard(shard, may_lag=False) as conn:
            rows = (
                await conn.execute(
                    select(table.c.id, table.c.buyer_user_id, table.c.promoter_code)
                    .where(
                        table.c.attribution_status == PENDING,
                        or_(
                            table.c.attribution_next_at.is_(None),
                            table.c.attribution_next_at <= now,
                        ),
                    )
                    .order_by(table.c.id)
                    .limit(batch)
                )
            ).all()
        answers = await asyncio.gather(*(ask(row[1], row[2]) for row in rows))
        unavailable = False
        for (order_id, buyer_user_id, _), answer in zip(rows, answers, strict=True):
            if isinstance(answer, str):
                log.info("attribution of order %s still pending: %s", order_id, answer)
                await _postpone(db, order_id, max_backoff)
                unavailable = True
                continue
            if answer is None:
                log.warning(
                    "order %s: buyer %s unknown; nobody is attributed", order_id, buyer_user_id
                )

            async def work(
                tx: Tx, order_id: int = order_id, found: Attribution | None = answer
            ) -> bool:
                return await record_snapshot(tx, order_id, found)

            if await db.run(work):
                resolved += 1
        if unavailable:
            # The service is down: the other shards would fail the same way.
            return resolved
    return resolved


class AttributionResolver:
    """The background task: a pass every ``interval`` seconds, or at once when woken
    (an order came in pending from the topic)."""

    def __init__(
        self,
        db: Database,
        client: UserServiceClient,
        levels_of: Callable[[], Awaitable[int]],
        interval: float,
        max_backoff: float,
    ) -> None:
        self.db = db
        self.client = client
        self.levels_of = levels_of
        self.interval = interval
        self.max_backoff = max_backoff
        self._wake = asyncio.Event()

    async def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Cleared before the pass: an order arriving during it wakes the next one.
            self._wake.clear()
            try:
                await resolve_pending(
                    self.db, self.client, await self.levels_of(), max_backoff=self.max_backoff
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("attribution pass failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
            except TimeoutError:
                pass
