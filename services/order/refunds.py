"""Refunds (ARCHITECTURE §5): whole order, per item, or an order-level amount spread over the
items in proportion to what each still has paid (largest remainder first, so the parts sum
exactly). Several refunds per order; together they never exceed what was paid; a refund is
idempotent on its refund_no. Shipping is not refunded through here: it earns no commission.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from sqlalchemy import update

from libs.common.db.engine import Tx
from libs.common.errors import BadRequest, Conflict
from libs.common.ids import IdGenerator, shard_of
from libs.common.messaging.outbox import utcnow
from libs.common.money import split_largest_remainder
from services.order import publishing
from services.order.models import CLOSED, COMPLETED, CREATED, PAID, order_items, orders, refunds
from services.order.records import Item, Order, load_in_tx, load_refunds
from services.order.schemas import RefundIn


class StaleOrder(Exception):
    """Another refund of the same order committed between our read and our update: the
    caller runs the whole refund again on what is now stored."""


def refund_fingerprint(body: RefundIn) -> str:
    canonical = orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _exceeds(order: Order, asked: int, remaining: int, sku: str | None = None) -> Conflict:
    details: dict[str, Any] = {
        "order_id": str(order.id),
        "requested_amount": asked,
        "refundable_amount": remaining,
    }
    if sku is not None:
        details["sku"] = sku
    return Conflict(
        f"refund of {asked} exceeds the {remaining} still paid"
        + (f" for sku {sku!r}" if sku else ""),
        code="refund.exceeds_paid",
        details=details,
    )


def split_refund(order: Order, body: RefundIn) -> list[tuple[Item, int]]:
    """How much of the refund each item takes (items with 0 left out)."""
    if body.items is not None and body.amount is not None:
        raise BadRequest(
            "give either items or an order-level amount, not both", code="refund.ambiguous"
        )
    remaining_total = sum(i.remaining_amount for i in order.items)
    if body.items is not None:
        by_sku = {i.sku: i for i in order.items}
        parts: list[tuple[Item, int]] = []
        seen: set[str] = set()
        for line in body.items:
            item = by_sku.get(line.sku)
            if item is None:
                raise BadRequest(
                    f"order {order.id} has no sku {line.sku!r}",
                    code="refund.unknown_sku",
                    details={"sku": line.sku},
                )
            if line.sku in seen:
                raise BadRequest(f"sku {line.sku!r} appears twice", code="refund.duplicate_sku")
            seen.add(line.sku)
            amount = item.remaining_amount if line.amount is None else line.amount
            if amount < 0 or (line.amount is not None and amount == 0):
                raise BadRequest(
                    "a refund amount is a positive integer of minor units",
                    code="refund.invalid_amount",
                    details={"sku": line.sku},
                )
            if amount > item.remaining_amount:
                raise _exceeds(order, amount, item.remaining_amount, item.sku)
            parts.append((item, amount))
    else:
        total = remaining_total if body.amount is None else body.amount
        if body.amount is not None and body.amount <= 0:
            raise BadRequest(
                "a refund amount is a positive integer of minor units",
                code="refund.invalid_amount",
            )
        if total > remaining_total:
            raise _exceeds(order, total, remaining_total)
        shares = split_largest_remainder(total, [i.remaining_amount for i in order.items])
        parts = list(zip(order.items, shares, strict=True))
    parts = [(item, amount) for item, amount in parts if amount > 0]
    if not parts:
        raise Conflict(
            f"order {order.id} has nothing left to refund",
            code="refund.nothing_to_refund",
            details={"order_id": str(order.id)},
        )
    return parts


async def refund(
    tx: Tx, ids: IdGenerator, order_id: int, body: RefundIn
) -> tuple[dict[str, Any], Order, bool]:
    """Record one refund; returns (refund, order, created). A repeat of a refund_no with the
    same body is the first refund; with another body a 409 ``refund.duplicate_conflict``."""
    order = await load_in_tx(tx, order_id)
    conn = await tx.shard(shard_of(order_id))
    wanted = refund_fingerprint(body)
    for existing in await load_refunds(conn, order_id):
        if existing["refund_no"] == body.refund_no:
            if existing["fingerprint"] != wanted:
                raise Conflict(
                    f"refund {body.refund_no!r} exists with another body",
                    code="refund.duplicate_conflict",
                    details={"refund_id": str(existing["id"])},
                )
            return existing, order, False
    if order.status == CREATED:
        raise Conflict(
            f"order {order.id} is not paid",
            code="order.not_paid",
            details={"order_id": str(order.id), "status": order.status},
        )
    if order.status == CLOSED:
        raise Conflict(
            f"order {order.id} was closed unpaid",
            code="order.closed",
            details={"order_id": str(order.id), "status": order.status},
        )
    parts = split_refund(order, body)
    total = sum(amount for _, amount in parts)
    table = orders.for_id(order_id)
    # The order's refunded total is the version: a concurrent refund makes this miss.
    moved = await conn.execute(
        update(table)
        .where(
            table.c.id == order_id,
            table.c.refunded_amount == order.refunded_amount,
            table.c.status.in_((PAID, COMPLETED)),
        )
        .values(refunded_amount=table.c.refunded_amount + total)
    )
    if not moved.rowcount:
        raise StaleOrder(order_id)
    items_table = order_items.for_id(order_id)
    for item, amount in parts:
        changed = await conn.execute(
            update(items_table)
            .where(
                items_table.c.id == item.id,
                items_table.c.refunded_amount + amount <= items_table.c.paid_amount,
            )
            .values(refunded_amount=items_table.c.refunded_amount + amount)
        )
        if not changed.rowcount:
            raise StaleOrder(order_id)
    record = {
        "id": ids.next_id_for(order_id),
        "order_id": order_id,
        "refund_no": body.refund_no,
        "amount": total,
        "items": [
            {
                "item_id": item.id,
                "sku": item.sku,
                "refunded_amount": amount,
                "remaining_paid_amount": item.remaining_amount - amount,
            }
            for item, amount in parts
        ],
        "fingerprint": wanted,
        "created_at": utcnow(),
    }
    await conn.execute(
        refunds.for_id(order_id).insert(),
        {**record, "items": orjson.dumps(record["items"]).decode()},
    )
    order = await load_in_tx(tx, order_id)
    await publishing.order_refunded(tx, order, record)
    return record, order, True
