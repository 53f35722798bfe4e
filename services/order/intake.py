"""Order intake (REST, the ``platform.orders`` topic and the webhooks all come here):
validation, idempotency on (platform, order_no), sharded storage and the attribution
snapshot taken at creation (ARCHITECTURE §5)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import orjson

from libs.common.db.engine import Tx
from libs.common.db.global_index import claim
from libs.common.errors import BadRequest, Conflict
from libs.common.ids import IdGenerator, shard_of
from libs.common.messaging.outbox import utcnow
from libs.common.money import CURRENCY_EXPONENTS
from services.order import publishing
from services.order.models import (
    CREATED,
    NONE,
    ORDER_NO_INDEX,
    PENDING,
    RESOLVED,
    order_items,
    orders,
)
from services.order.records import Order, load_in_tx, order_no_key
from services.order.schemas import OrderIn
from services.order.user_client import Attribution

# Far above any real order, far below 2^63: sums of items can never overflow a BIGINT.
MAX_AMOUNT = 10**15


def validate(body: OrderIn) -> OrderIn:
    """The rules a schema cannot say; a refusal is a 400 with a dotted code, nothing stored.

    The currency must be one we know the exponent of; amounts are non-negative integers of
    the minor unit; an item's paid amount is at most quantity × unit price (discounts lower
    it, nothing raises it); a sku appears once per order (refunds name items by sku).
    """
    currency = body.currency.upper()
    if currency not in CURRENCY_EXPONENTS:
        raise BadRequest(
            f"unsupported currency {body.currency!r}",
            code="order.unsupported_currency",
            details={"supported": sorted(CURRENCY_EXPONENTS)},
        )
    if "\x1f" in body.platform or "\x1f" in body.order_no:
        raise BadRequest("platform and order_no must be printable", code="order.invalid_number")
    if not 0 <= body.shipping_amount <= MAX_AMOUNT:
        raise BadRequest(
            "shipping_amount must be a non-negative integer of minor units",
            code="order.invalid_amount",
            details={"field": "shipping_amount"},
        )
    seen: set[str] = set()
    for index, item in enumerate(body.items):
        for name in ("unit_price_amount", "paid_amount"):
            if not 0 <= getattr(item, name) <= MAX_AMOUNT:
                raise BadRequest(
                    f"items[{index}].{name} must be a non-negative integer of minor units",
                    code="order.invalid_amount",
                    details={"field": f"items[{index}].{name}"},
                )
        if item.paid_amount > item.quantity * item.unit_price_amount:
            raise BadRequest(
                f"items[{index}] paid {item.paid_amount}, more than quantity × unit price "
                f"({item.quantity * item.unit_price_amount})",
                code="order.item_overpaid",
                details={"sku": item.sku},
            )
        if item.sku in seen:
            raise BadRequest(
                f"sku {item.sku!r} appears twice; merge the lines",
                code="order.duplicate_sku",
                details={"sku": item.sku},
            )
        seen.add(item.sku)
    return body.model_copy(update={"currency": currency})


def fingerprint(body: OrderIn) -> str:
    """The canonical hash of what makes an order: a replay must carry the same one."""
    canonical = orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _conflict(existing: Order) -> Conflict:
    return Conflict(
        f"order {existing.order_no!r} of {existing.platform!r} exists with another body",
        code="order.duplicate_conflict",
        details={"order_id": str(existing.id)},
    )


def replay_of(existing: Order, body: OrderIn) -> Order:
    """A repeat of an intake: the same body gives the first order back, another is a 409."""
    if existing.fingerprint != fingerprint(body):
        raise _conflict(existing)
    return existing


@dataclass(frozen=True)
class AttributionOutcome:
    """What the user service said at intake: a snapshot, or None when it could not answer."""

    attribution: Attribution | None

    @property
    def status(self) -> str:
        if self.attribution is None:
            return PENDING
        return RESOLVED if self.attribution.beneficiaries else NONE


async def create_order(
    tx: Tx, ids: IdGenerator, body: OrderIn, outcome: AttributionOutcome
) -> tuple[Order, bool]:
    """Store a validated order with its attribution snapshot; returns (order, created).

    The (platform, order_no) index row is the claim: when another intake holds it, this one
    resolves to that order (same body) or is a 409 ``order.duplicate_conflict``.
    """
    order_id = ids.next_id_for(body.buyer_user_id)
    owner = await claim(
        await tx.main(), ORDER_NO_INDEX, order_no_key(body.platform, body.order_no), order_id
    )
    if owner != order_id:
        return replay_of(await load_in_tx(tx, owner), body), False
    now = utcnow()
    attribution = outcome.attribution
    conn = await tx.shard(shard_of(order_id))
    await conn.execute(
        orders.for_id(order_id).insert(),
        {
            "id": order_id,
            "platform": body.platform,
            "order_no": body.order_no,
            "buyer_user_id": body.buyer_user_id,
            "currency": body.currency,
            "status": CREATED,
            "promoter_code": body.promoter_code,
            "promoter_id": attribution.promoter_id if attribution else None,
            "beneficiaries": orjson.dumps(
                attribution.beneficiaries if attribution else []
            ).decode(),
            "attribution_status": outcome.status,
            "attribution_attempts": 0 if attribution else 1,
            "attribution_next_at": None if attribution else now,
            "shipping_amount": body.shipping_amount,
            "paid_amount": sum(i.paid_amount for i in body.items),
            "refunded_amount": 0,
            "fingerprint": fingerprint(body),
            "created_at": now,
            "auto_completed": False,
        },
    )
    await conn.execute(
        order_items.for_id(order_id).insert(),
        [
            {
                "id": ids.next_id_for(order_id),
                "order_id": order_id,
                "line_no": line_no,
                "sku": item.sku,
                "category": item.category,
                "quantity": item.quantity,
                "unit_price_amount": item.unit_price_amount,
                "paid_amount": item.paid_amount,
                "refunded_amount": 0,
            }
            for line_no, item in enumerate(body.items)
        ],
    )
    order = await load_in_tx(tx, order_id)
    await publishing.order_created(tx, order)
    return order, True
