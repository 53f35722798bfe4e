"""An order service runtime on the test database, its user service at a closed port (so
every attribution at intake comes out ``pending``, as when the user service is down)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from deploy.local.stack import free_port
from libs.common.db.migrations import migrate
from libs.common.ids import IdGenerator
from libs.common.messaging.outbox import outbox
from libs.common.runtime import Runtime
from services.order.app import SPEC
from services.order.migrations import MIGRATIONS
from services.order.service import OrderService, order_service
from services.order.settings import OrderServiceSettings


@pytest.fixture
async def runtime(database_url: str, redis_url: str, key_prefix: str) -> AsyncIterator[Runtime]:
    settings = OrderServiceSettings(
        service_name="order",
        database_url=database_url,
        redis_url=redis_url,
        redis_key_prefix=key_prefix,
        user_service_url=f"http://127.0.0.1:{free_port()}",
        user_service_timeout_seconds=1.0,
        node_id=7,
        shopify_webhook_secret="shopify-secret",
        woocommerce_webhook_secret="woo-secret",
    )
    runtime = Runtime(SPEC, settings)
    runtime.ids = IdGenerator(7)
    await migrate(runtime.db, MIGRATIONS)
    try:
        yield runtime
    finally:
        await order_service(runtime).users.close()
        await runtime.producer.stop()
        await runtime.redis.aclose()
        await runtime.db.dispose()


@pytest.fixture
def orders(runtime: Runtime) -> OrderService:
    return order_service(runtime)


async def order_events(service: OrderService, order_id: int | None = None) -> list[dict[str, Any]]:
    """The envelopes queued on order.events (in outbox order), optionally of one order."""
    async with service.db.read(may_lag=False) as conn:
        rows = await conn.execute(
            select(outbox.c.payload).where(outbox.c.topic == "order.events").order_by(outbox.c.seq)
        )
        events = [orjson.loads(row[0]) for row in rows]
    if order_id is None:
        return events
    return [e for e in events if e["key"] == str(order_id)]


def order_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "platform": "shop",
        "order_no": "N-1",
        "buyer_user_id": "123456789",
        "currency": "CNY",
        "items": [
            {
                "sku": "A",
                "category": "books",
                "quantity": 2,
                "unit_price_amount": 5000,
                "paid_amount": 9000,
            },
            {
                "sku": "B",
                "category": "toys",
                "quantity": 1,
                "unit_price_amount": 3001,
                "paid_amount": 3001,
            },
        ],
        "shipping_amount": 1000,
    }
    body.update(overrides)
    return body
