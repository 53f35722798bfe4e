"""Reading orders back from their shard, and the shapes they take in the API and in events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.engine import Database, Tx
from libs.common.db.global_index import lookup
from libs.common.errors import NotFound
from libs.common.events import Beneficiary, OrderData, OrderItemData
from libs.common.ids import shard_of
from services.order.models import ORDER_NO_INDEX, order_items, orders, refunds


def order_no_key(platform: str, order_no: str) -> str:
    """The global index value of (platform, order_no); \\x1f cannot appear in either."""
    return f"{platform}\x1f{order_no}"


def utc(moment: datetime | None) -> datetime | None:
    """Stored naive UTC → aware UTC for the API and events."""
    return moment.replace(tzinfo=UTC) if moment is not None else None


@dataclass
class Item:
    id: int
    sku: str
    category: str
    quantity: int
    unit_price_amount: int
    paid_amount: int
    refunded_amount: int

    @property
    def remaining_amount(self) -> int:
        return self.paid_amount - self.refunded_amount


@dataclass
class Order:
    id: int
    platform: str
    order_no: str
    buyer_user_id: int
    currency: str
    status: str
    promoter_code: str | None
    promoter_id: int | None
    beneficiaries: list[dict[str, int]]
    attribution_status: str
    shipping_amount: int
    paid_amount: int
    refunded_amount: int
    fingerprint: str
    created_at: datetime
    paid_at: datetime | None
    completed_at: datetime | None
    closed_at: datetime | None
    auto_completed: bool = False
    items: list[Item] = field(default_factory=list)

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "platform": self.platform,
            "order_no": self.order_no,
            "buyer_user_id": self.buyer_user_id,
            "currency": self.currency,
            "status": self.status,
            "promoter_code": self.promoter_code,
            "promoter_id": self.promoter_id,
            "beneficiaries": self.beneficiaries,
            "attribution_status": self.attribution_status,
            "items": [
                {
                    "id": i.id,
                    "sku": i.sku,
                    "category": i.category,
                    "quantity": i.quantity,
                    "unit_price_amount": i.unit_price_amount,
                    "paid_amount": i.paid_amount,
                    "refunded_amount": i.refunded_amount,
                }
                for i in self.items
            ],
            "shipping_amount": self.shipping_amount,
            "paid_amount": self.paid_amount,
            "refunded_amount": self.refunded_amount,
            "created_at": utc(self.created_at),
            "paid_at": utc(self.paid_at),
            "completed_at": utc(self.completed_at),
            "closed_at": utc(self.closed_at),
        }

    def to_event(self, *, as_paid: bool = False) -> OrderData:
        """order.created / order.paid data. ``as_paid``: the items as they were paid (a
        deferred order.paid comes before the order.refunded events that follow it)."""
        return OrderData(
            order_id=self.id,
            platform=self.platform,
            order_no=self.order_no,
            buyer_user_id=self.buyer_user_id,
            currency=self.currency,
            promoter_id=self.promoter_id,
            beneficiaries=[Beneficiary(**b) for b in self.beneficiaries],
            attribution_status=self.attribution_status,
            items=[
                OrderItemData(
                    item_id=i.id,
                    sku=i.sku,
                    category=i.category,
                    quantity=i.quantity,
                    unit_price_amount=i.unit_price_amount,
                    paid_amount=i.paid_amount,
                    refunded_amount=0 if as_paid else i.refunded_amount,
                )
                for i in self.items
            ],
            shipping_amount=self.shipping_amount,
            status="paid" if as_paid else self.status,
            created_at=utc(self.created_at),
            paid_at=utc(self.paid_at),
        )


def _order_from_row(row: Any) -> Order:
    return Order(
        id=row.id,
        platform=row.platform,
        order_no=row.order_no,
        buyer_user_id=row.buyer_user_id,
        currency=row.currency,
        status=row.status,
        promoter_code=row.promoter_code,
        promoter_id=row.promoter_id,
        beneficiaries=orjson.loads(row.beneficiaries),
        attribution_status=row.attribution_status,
        shipping_amount=row.shipping_amount,
        paid_amount=row.paid_amount,
        refunded_amount=row.refunded_amount,
        fingerprint=row.fingerprint,
        created_at=row.created_at,
        paid_at=row.paid_at,
        completed_at=row.completed_at,
        closed_at=row.closed_at,
        auto_completed=bool(row.auto_completed),
    )


async def load_order(conn: AsyncConnection, order_id: int) -> Order | None:
    """The order and its items, from the shard connection ``conn`` (None if absent)."""
    table = orders.for_id(order_id)
    row = (await conn.execute(select(table).where(table.c.id == order_id))).first()
    if row is None:
        return None
    order = _order_from_row(row)
    items_table = order_items.for_id(order_id)
    item_rows = await conn.execute(
        select(items_table)
        .where(items_table.c.order_id == order_id)
        .order_by(items_table.c.line_no)
    )
    order.items = [
        Item(
            id=r.id,
            sku=r.sku,
            category=r.category,
            quantity=r.quantity,
            unit_price_amount=r.unit_price_amount,
            paid_amount=r.paid_amount,
            refunded_amount=r.refunded_amount,
        )
        for r in item_rows
    ]
    return order


async def load_in_tx(tx: Tx, order_id: int) -> Order:
    """The order as this transaction sees it; 404 ``order.not_found``."""
    order = await load_order(await tx.shard(shard_of(order_id)), order_id)
    if order is None:
        raise NotFound(f"order {order_id} not found", code="order.not_found")
    return order


async def get_order(db: Database, order_id: int) -> Order:
    """Read one order (the primary: lifecycle callers act on what they read)."""
    async with db.read_shard(shard_of(order_id), may_lag=False) as conn:
        order = await load_order(conn, order_id)
    if order is None:
        raise NotFound(f"order {order_id} not found", code="order.not_found")
    return order


async def order_id_by_number(db: Database, platform: str, order_no: str) -> int:
    """The order id of the platform's number; 404 ``order.not_found``."""
    async with db.read(may_lag=False) as conn:
        order_id = await lookup(conn, ORDER_NO_INDEX, order_no_key(platform, order_no))
    if order_id is None:
        raise NotFound(
            f"no order {order_no!r} from platform {platform!r}",
            code="order.not_found",
            details={"platform": platform, "order_no": order_no},
        )
    return order_id


async def load_refunds(conn: AsyncConnection, order_id: int) -> list[dict[str, Any]]:
    table = refunds.for_id(order_id)
    rows = await conn.execute(
        select(table).where(table.c.order_id == order_id).order_by(table.c.id)
    )
    return [
        {
            "id": r.id,
            "order_id": r.order_id,
            "refund_no": r.refund_no,
            "amount": r.amount,
            "items": orjson.loads(r.items),
            "fingerprint": r.fingerprint,
            "created_at": r.created_at,
        }
        for r in rows
    ]
