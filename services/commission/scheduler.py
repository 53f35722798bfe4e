"""The settlement scheduler: one leader (a Redis lock with an owner token) finds orders whose
frozen period is over and hands them to the ``commission_settle`` topic, whose consumer
settles them in bounded batches. If producing fails, the leader settles them itself."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select

from libs.common.db.engine import Tx
from libs.common.messaging.envelope import COMMISSION_SETTLE, make_event
from libs.common.messaging.outbox import utcnow
from libs.common.metrics import SETTLEMENT_LAG
from libs.common.redis import LeaderElection
from libs.common.runtime import Runtime
from services.commission.context import CommissionContext, CommissionServiceSettings
from services.commission.ledger import run_guarded
from services.commission.models import commission_orders, tables_for
from services.commission.service import count_settled
from services.commission.settlement import SettleResult, due_orders, mark_enqueued, settle_orders

log = logging.getLogger("tuike.commission.scheduler")


@dataclass
class TickResult:
    enqueued: int = 0
    settled_synchronously: int = 0


def _settings(runtime: Runtime) -> CommissionServiceSettings:
    settings = runtime.settings
    if isinstance(settings, CommissionServiceSettings):
        return settings
    return CommissionServiceSettings(**settings.model_dump())


class SettlementScheduler:
    def __init__(self, runtime: Runtime, max_batches_per_tick: int = 20) -> None:
        self.runtime = runtime
        self.settings = _settings(runtime)
        self.max_batches = max_batches_per_tick
        self.election = LeaderElection(
            runtime.redis, f"{runtime.key_prefix}commission:settlement-leader", ttl_seconds=10
        )

    @property
    def ctx(self) -> CommissionContext:
        return CommissionContext(self.runtime.id_generator, tables_for(self.settings.timezone))

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    if await self.election.step():
                        await self.tick()
                except Exception:
                    log.exception("settlement tick failed")
                try:
                    await asyncio.wait_for(
                        stop.wait(), timeout=self.settings.settle_interval_seconds
                    )
                except TimeoutError:
                    pass
        finally:
            if self.election.is_leader:
                await self.election.lock.release()
                self.election.is_leader = False

    async def tick(self, now: datetime | None = None) -> TickResult:
        """Hand every due order to the queue, in bounded batches."""
        now = now or utcnow()
        result = TickResult()
        db = self.runtime.db
        batch = self.settings.settle_batch_size
        requeue_before = now - timedelta(seconds=self.settings.settle_requeue_seconds)
        for _ in range(self.max_batches):

            async def find(tx: Tx) -> list[int]:
                return await due_orders(tx, now, batch, requeue_before)

            order_ids = await db.run(find)
            if not order_ids:
                break
            try:
                await self._produce(order_ids)
            except Exception as exc:
                log.warning("commission_settle unavailable (%s): settling synchronously", exc)
                settled = await self._settle_now(order_ids, now)
                result.settled_synchronously += settled.orders
            else:

                async def mark(tx: Tx, order_ids: list[int] = order_ids) -> None:
                    await mark_enqueued(tx, order_ids, now)

                await db.run(mark)
                result.enqueued += len(order_ids)
            if len(order_ids) < batch:
                break
        await self._report_lag(now)
        return result

    async def _produce(self, order_ids: list[int]) -> None:
        # One deadline for all of it: a producer that cannot learn the topic's partitions
        # (the broker away, or the producer stopped) waits in ``send`` itself, and for a
        # stopped one that wait never ends. Past it the tick settles synchronously.
        await asyncio.wait_for(self._send_due(order_ids), timeout=15)

    async def _send_due(self, order_ids: list[int]) -> None:
        stamp = int(time.time() * 1000)
        producer = self.runtime.producer
        futures = []
        for order_id in order_ids:
            event = make_event(
                "commission.settle_due",
                f"{order_id}:{stamp}",
                key=order_id,
                data={"order_id": str(order_id)},
                source="commission",
            )
            futures.append(
                await producer.send(
                    COMMISSION_SETTLE, value=event.to_bytes(), key=str(order_id).encode()
                )
            )
        await asyncio.gather(*futures)

    async def _settle_now(self, order_ids: list[int], now: datetime) -> SettleResult:
        ctx = self.ctx
        result: SettleResult = await run_guarded(
            self.runtime.db, lambda tx: settle_orders(tx, ctx, order_ids, now)
        )
        count_settled(result, "sync")
        return result

    async def _report_lag(self, now: datetime) -> None:
        async with self.runtime.db.read(may_lag=True) as conn:
            oldest = await conn.scalar(
                select(func.min(commission_orders.c.unfreeze_at)).where(
                    commission_orders.c.settled_at.is_(None),
                    commission_orders.c.accrued_at.is_not(None),
                    commission_orders.c.unfreeze_at <= now,
                )
            )
        SETTLEMENT_LAG.set((now - oldest).total_seconds() if oldest is not None else 0)
