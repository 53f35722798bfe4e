"""Stats tests: a migrated stats database of the backend, the real Redis, and envelopes
built from the event contracts (libs/common/events.py) as the other services publish them."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from redis.asyncio import Redis

from libs.common import relation_path
from libs.common.db.engine import Database
from libs.common.db.migrations import migrate
from libs.common.events import (
    Beneficiary,
    CommissionLine,
    CommissionsChanged,
    OrderData,
    OrderItemData,
    OrderRefunded,
    RefundedItem,
    UserBound,
)
from libs.common.ids import IdGenerator
from libs.common.messaging.envelope import Envelope, make_event
from libs.common.redis import Cache, connect
from services.stats.migrations import MIGRATIONS
from services.stats.service import StatsStores

SHANGHAI = ZoneInfo("Asia/Shanghai")
_ids = IdGenerator(secrets.randbelow(1000))


def new_id() -> int:
    """A fresh user-like id (random shard gene), as the user service makes them."""
    return _ids.next_id()


def at(day: str, clock: str) -> datetime:
    """A moment in the business timezone: at("2026-03-02", "23:30")."""
    return datetime.fromisoformat(f"{day}T{clock}:00").replace(tzinfo=SHANGHAI)


@pytest.fixture
async def stats_db(db: Database) -> Database:
    await migrate(db, MIGRATIONS)
    return db


@pytest.fixture
async def stores(redis_url: str, key_prefix: str) -> AsyncIterator[StatsStores]:
    redis: Redis = connect(redis_url)
    yield StatsStores(redis, Cache(redis, f"{key_prefix}stats:"), key_prefix, SHANGHAI)
    keys = [key async for key in redis.scan_iter(match=f"{key_prefix}*")]
    if keys:
        await redis.delete(*keys)
    await redis.aclose()


def bound(
    user_id: int, ancestors: list[int], when: datetime, kind: str = "user.bound", version: int = 2
) -> Envelope:
    """A bind event as the user service writes it (version 2: the ancestors as a compact
    path), or as it wrote it before (version 1: a list of decimal ids)."""
    data = UserBound(
        user_id=user_id,
        parent_id=ancestors[0],
        level=len(ancestors) + 1,
        bind_source="code",
        bound_at=when,
        **(
            {"ancestor_path": relation_path.path_of(ancestors[::-1])}
            if version == 2
            else {"ancestor_ids": ancestors}
        ),
    )
    return make_event(
        kind,
        f"{user_id}:{when.timestamp()}",
        key=user_id,
        data=data.model_dump(mode="json", exclude_defaults=True),
        source="user",
        version=version,
    )


def paid(
    order_id: int,
    buyer: int,
    beneficiaries: list[int],
    item_amounts: list[int],
    when: datetime,
    shipping_amount: int = 0,
) -> Envelope:
    data = OrderData(
        order_id=order_id,
        platform="default",
        order_no=f"NO-{order_id}",
        buyer_user_id=buyer,
        currency="CNY",
        promoter_id=beneficiaries[0] if beneficiaries else None,
        beneficiaries=[
            Beneficiary(level=n, user_id=u) for n, u in enumerate(beneficiaries, start=1)
        ],
        attribution_status="resolved" if beneficiaries else "none",
        items=[
            OrderItemData(
                item_id=order_id + n + 1,
                sku=f"SKU-{n}",
                category="books",
                quantity=1,
                unit_price_amount=amount,
                paid_amount=amount,
            )
            for n, amount in enumerate(item_amounts)
        ],
        shipping_amount=shipping_amount,
        status="paid",
        created_at=when,
        paid_at=when,
    )
    return make_event(
        "order.paid", order_id, key=order_id, data=data.model_dump(mode="json"), source="order"
    )


def refunded(order_id: int, refund_id: int, amounts: list[int], when: datetime) -> Envelope:
    data = OrderRefunded(
        order_id=order_id,
        refund_id=refund_id,
        refund_no=f"RF-{refund_id}",
        currency="CNY",
        items=[
            RefundedItem(
                item_id=order_id + n + 1,
                sku=f"SKU-{n}",
                refunded_amount=amount,
                remaining_paid_amount=0,
            )
            for n, amount in enumerate(amounts)
        ],
        refunded_at=when,
    )
    return make_event(
        "order.refunded",
        refund_id,
        key=order_id,
        data=data.model_dump(mode="json"),
        source="order",
    )


def commissions(
    kind: str, order_id: int, lines: list[tuple[int, int, int]], when: datetime, fact: Any = None
) -> Envelope:
    """``lines``: (level, beneficiary_id, amount)."""
    data = CommissionsChanged(
        order_id=order_id,
        lines=[
            CommissionLine(
                record_id=order_id * 10 + n,
                order_id=order_id,
                item_id=order_id + 1,
                level=level,
                beneficiary_id=beneficiary,
                amount=amount,
                currency="CNY",
            )
            for n, (level, beneficiary, amount) in enumerate(lines)
        ],
        occurred_at=when,
    )
    return make_event(
        f"commission.{kind}",
        fact if fact is not None else f"{order_id}:{when.timestamp()}",
        key=order_id,
        data=data.model_dump(mode="json"),
        source="commission",
    )
