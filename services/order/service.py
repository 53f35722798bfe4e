"""The order service's use cases behind one facade, so a handler calls one function.

The rules live in intake.py, lifecycle.py, refunds.py and attribution.py; this module only
orders the steps of a request: outside calls (the user service) first, then one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar, cast

from libs.common.db.engine import Database, Tx
from libs.common.db.global_index import lookup
from libs.common.errors import Conflict
from libs.common.ids import IdGenerator, shard_of
from libs.common.runtime import Runtime
from services.order import intake, lifecycle
from services.order.attribution import AttributionResolver, attribute_at_intake
from services.order.intake import AttributionOutcome
from services.order.models import ORDER_NO_INDEX
from services.order.records import (
    Order,
    get_order,
    load_in_tx,
    load_order,
    load_refunds,
    order_id_by_number,
    order_no_key,
)
from services.order.refunds import StaleOrder, refund
from services.order.schemas import OrderIn, RefundIn
from services.order.settings import OrderServiceSettings, OrderSettings
from services.order.user_client import UserServiceClient

STALE_RETRIES = 8
T = TypeVar("T")

# An order as callers name it: our id, or the platform's (platform, order_no).
OrderRef = int | tuple[str, str]


class OrderService:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.db: Database = runtime.db
        self.settings = cast(OrderServiceSettings, runtime.settings)
        self.users = UserServiceClient(self.settings)
        self.resolver = AttributionResolver(
            self.db,
            self.users,
            self.attribution_levels,
            self.settings.attribution_retry_seconds,
            self.settings.attribution_max_backoff_seconds,
        )

        # SQLite has one writer: queueing this process's writers costs less than letting them
        # poll the file lock (its busy handler sleeps up to 100 ms between tries).
        self._sqlite_writer = asyncio.Lock()

    async def _write(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        if not self.db.is_sqlite:
            return await self.db.run(work)
        async with self._sqlite_writer:
            return await self.db.run(work)

    @property
    def ids(self) -> IdGenerator:
        return self.runtime.id_generator

    async def business(self) -> OrderSettings:
        return cast(OrderSettings, await self.runtime.business.current())

    async def attribution_levels(self) -> int:
        return (await self.business()).attribution_levels

    # -- intake ----------------------------------------------------------------------------
    async def _existing(self, body: OrderIn) -> Order | None:
        async with self.db.read(may_lag=False) as conn:
            order_id = await lookup(
                conn, ORDER_NO_INDEX, order_no_key(body.platform, body.order_no)
            )
        if order_id is None:
            return None
        async with self.db.read_shard(shard_of(order_id), may_lag=False) as conn:
            return await load_order(conn, order_id)

    async def create_order(self, body: OrderIn) -> tuple[Order, bool]:
        """REST and webhook intake; returns (order, created)."""
        body = intake.validate(body)
        existing = await self._existing(body)
        if existing is not None:  # a replay costs no call to the user service
            return intake.replay_of(existing, body), False
        outcome = await attribute_at_intake(
            self.users, body.buyer_user_id, body.promoter_code, await self.attribution_levels()
        )

        async def work(tx: Tx) -> tuple[Order, bool]:
            return await intake.create_order(tx, self.ids, body, outcome)

        order, created = await self._write(work)
        if created and outcome.attribution is None:
            await self.resolver.wake()
        return order, created

    async def ingest(self, tx: Tx, body: OrderIn) -> Order:
        """Topic intake inside the consumer's transaction: no outside call here, so the
        snapshot is taken by the resolver right after the commit."""
        order, created = await intake.create_order(
            tx, self.ids, intake.validate(body), AttributionOutcome(None)
        )
        if created:
            tx.after_commit(self.resolver.wake)
        return order

    # -- reads -----------------------------------------------------------------------------
    async def order_id(self, ref: OrderRef) -> int:
        """Our id of an order named either way; 404 ``order.not_found`` by number."""
        if isinstance(ref, tuple):
            return await order_id_by_number(self.db, *ref)
        return ref

    async def get(self, ref: OrderRef) -> Order:
        return await get_order(self.db, await self.order_id(ref))

    async def id_by_number(self, platform: str, order_no: str) -> int:
        return await order_id_by_number(self.db, platform, order_no)

    async def refunds_of(self, ref: OrderRef) -> tuple[Order, list[dict[str, Any]]]:
        order_id = await self.order_id(ref)
        order = await get_order(self.db, order_id)
        async with self.db.read_shard(shard_of(order_id), may_lag=False) as conn:
            return order, await load_refunds(conn, order_id)

    # -- lifecycle -------------------------------------------------------------------------
    async def pay(self, ref: OrderRef, at: datetime | None = None) -> Order:
        order_id = await self.order_id(ref)
        return await self._write(lambda tx: lifecycle.pay(tx, order_id, at))

    async def complete(self, ref: OrderRef, at: datetime | None = None) -> Order:
        order_id = await self.order_id(ref)
        return await self._write(lambda tx: lifecycle.complete(tx, order_id, at))

    async def close(self, ref: OrderRef, at: datetime | None = None) -> Order:
        order_id = await self.order_id(ref)
        return await self._write(lambda tx: lifecycle.close(tx, order_id, at))

    async def refund(self, ref: OrderRef, body: RefundIn) -> tuple[dict[str, Any], Order, bool]:
        """One refund; a concurrent refund of the same order makes us read again and redo."""
        order_id = await self.order_id(ref)
        for _ in range(STALE_RETRIES):
            try:
                return await self._write(lambda tx: refund(tx, self.ids, order_id, body))
            except StaleOrder:
                continue
        raise Conflict(
            f"order {order_id} is changing too fast; try again",
            code="order.busy",
            details={"order_id": str(order_id)},
        )

    async def refund_in_tx(self, tx: Tx, order_id: int, body: RefundIn) -> dict[str, Any]:
        record, _, _ = await refund(tx, self.ids, order_id, body)
        return record

    async def complete_due(self, now: datetime | None = None) -> int:
        days = (await self.business()).auto_complete_days
        return await lifecycle.complete_due_orders(self.db, days, now)

    async def load(self, tx: Tx, order_id: int) -> Order:
        return await load_in_tx(tx, order_id)


def order_service(runtime: Runtime) -> OrderService:
    """The one OrderService of a runtime (made on first use)."""
    found = runtime.__dict__.get("order_service")
    if found is None:
        found = OrderService(runtime)
        runtime.__dict__["order_service"] = found
    return cast(OrderService, found)
