"""Shopify webhooks: ``orders/paid`` (an order paid: take it in and pay it) and
``refunds/create`` (a refund of a paid order). Verified by X-Shopify-Hmac-Sha256, the
base64 HMAC-SHA256 of the raw body with the app's secret (TUIKE_SHOPIFY_WEBHOOK_SECRET)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from libs.common.errors import BadRequest, NotFound
from services.order.records import Order
from services.order.schemas import OrderIn, RefundIn
from services.order.service import OrderService
from services.order.webhooks.common import (
    attempt,
    buyer_id,
    header,
    minor,
    parse_json,
    parse_time,
    take_in,
    unique_skus,
    verify_base64_hmac,
)

CODE_ATTRIBUTES = ("promoter_code", "tuike_code", "ref")


def _line_sku(line: Mapping[str, Any]) -> str:
    if line.get("sku"):
        return str(line["sku"])[:100]
    if line.get("variant_id"):
        return f"variant:{line['variant_id']}"
    return f"line:{line.get('id')}"


def _promoter_code(payload: Mapping[str, Any]) -> str | None:
    for attribute in payload.get("note_attributes") or []:
        if attribute.get("name") in CODE_ATTRIBUTES and attribute.get("value"):
            return str(attribute["value"])[:64]
    return None


def map_order(payload: Mapping[str, Any], platform: str, buyer: int) -> OrderIn:
    """A Shopify order as our intake body: item paid = price × quantity − its discount
    allocations (taxes are not commissionable); shipping net of its discounts."""
    currency = str(payload.get("currency") or "").upper()
    lines = payload.get("line_items") or []
    if not lines:
        raise BadRequest("the Shopify order has no line items", code="webhook.invalid_body")
    skus = unique_skus([(_line_sku(line), str(line.get("id"))) for line in lines])
    items = []
    for index, (line, sku) in enumerate(zip(lines, skus, strict=True)):
        quantity = int(line.get("quantity") or 0)
        unit = minor(line.get("price"), currency, f"line_items[{index}].price")
        allocations = line.get("discount_allocations")
        if allocations:
            discount = sum(
                minor(a.get("amount"), currency, f"line_items[{index}].discount_allocations")
                for a in allocations
            )
        else:
            discount = minor(line.get("total_discount"), currency, f"line_items[{index}]")
        items.append(
            {
                "sku": sku,
                "category": str(line.get("product_type") or line.get("vendor") or "default")[:128],
                "quantity": quantity,
                "unit_price_amount": unit,
                "paid_amount": max(0, unit * quantity - discount),
            }
        )
    shipping = 0
    for index, line in enumerate(payload.get("shipping_lines") or []):
        price = line.get("discounted_price", line.get("price"))
        shipping += minor(price, currency, f"shipping_lines[{index}].price")
    return OrderIn.model_validate(
        {
            "platform": platform,
            "order_no": str(payload.get("id")),
            "buyer_user_id": buyer,
            "promoter_code": _promoter_code(payload),
            "currency": currency,
            "items": items,
            "shipping_amount": shipping,
        }
    )


def _customer(payload: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
    customer = payload.get("customer") or {}
    if customer.get("id"):
        name = " ".join(str(customer[k]) for k in ("first_name", "last_name") if customer.get(k))
        return str(customer["id"]), name or None, customer.get("phone")
    email = payload.get("email") or payload.get("contact_email")
    if email:
        return f"guest:{str(email).lower()}", None, payload.get("phone")
    raise BadRequest("the Shopify order names no customer", code="webhook.no_customer")


async def orders_paid(service: OrderService, payload: Mapping[str, Any]) -> dict[str, Any]:
    platform = service.settings.shopify_platform
    external_id, nickname, phone = _customer(payload)
    buyer = await buyer_id(service, platform, external_id, nickname, phone)
    order, created, changed = await take_in(service, map_order(payload, platform, buyer))
    paid = await attempt("pay", service.pay(order.id, parse_time(payload.get("processed_at"))))
    return {
        "status": "accepted",
        "order_id": str(order.id),
        "created": created,
        "body_changed": changed,
        "pay": paid,
    }


def map_refund(payload: Mapping[str, Any], order: Order) -> RefundIn | None:
    """Line refunds by item (their subtotal, net of discounts and tax); a refund without
    lines is an order-level amount (its transactions minus any shipping refund), capped at
    what the items still have paid. None: nothing commissionable was refunded."""
    currency = order.currency
    by_sku = {item.sku: item for item in order.items}
    lines = payload.get("refund_line_items") or []
    items: dict[str, int] = {}
    for index, line in enumerate(lines):
        line_item = line.get("line_item") or {}
        base = _line_sku(line_item) if line_item else f"line:{line.get('line_item_id')}"
        line_id = line_item.get("id") or line.get("line_item_id")
        sku = base if base in by_sku else f"{base}#{line_id}"
        if sku not in by_sku:
            raise BadRequest(
                f"refund line {index} names an item the order does not have",
                code="refund.unknown_sku",
                details={"sku": sku},
            )
        amount = minor(line.get("subtotal"), currency, f"refund_line_items[{index}].subtotal")
        items[sku] = items.get(sku, 0) + amount
    refund_no = str(payload.get("id"))
    if items:
        lines_in = [{"sku": sku, "amount": amount} for sku, amount in items.items() if amount > 0]
        return (
            RefundIn.model_validate({"refund_no": refund_no, "items": lines_in})
            if lines_in
            else None
        )
    total = 0
    for index, transaction in enumerate(payload.get("transactions") or []):
        if transaction.get("kind") == "refund" and transaction.get("status") in (None, "success"):
            total += minor(transaction.get("amount"), currency, f"transactions[{index}].amount")
    for index, adjustment in enumerate(payload.get("order_adjustments") or []):
        if adjustment.get("kind") == "shipping_refund":
            total -= abs(minor(adjustment.get("amount"), currency, f"order_adjustments[{index}]"))
    remaining = sum(item.remaining_amount for item in order.items)
    total = min(total, remaining)
    if total <= 0:
        return None
    return RefundIn(refund_no=refund_no, amount=total)


async def refunds_create(service: OrderService, payload: Mapping[str, Any]) -> dict[str, Any]:
    platform = service.settings.shopify_platform
    try:
        order_id = await service.id_by_number(platform, str(payload.get("order_id")))
    except NotFound:
        # Not an order we took in (placed before the shop plugged Tuike in): nothing to undo.
        return {"status": "ignored", "reason": "order.not_found"}
    order, recorded = await service.refunds_of(order_id)
    for existing in recorded:
        if existing["refund_no"] == str(payload.get("id")):  # Shopify retried the delivery
            return {
                "status": "accepted",
                "order_id": str(order_id),
                "refund_id": str(existing["id"]),
                "created": False,
            }
    body = map_refund(payload, order)
    if body is None:
        return {"status": "ignored", "reason": "nothing_commissionable", "order_id": str(order_id)}
    record, _, created = await service.refund(order_id, body)
    return {
        "status": "accepted",
        "order_id": str(order_id),
        "refund_id": str(record["id"]),
        "created": created,
    }


async def handle(
    service: OrderService, topic: str, raw: bytes, headers: Mapping[str, str]
) -> dict[str, Any]:
    """Verify, then dispatch by topic; other topics are acknowledged and ignored."""
    verify_base64_hmac(
        service.settings.shopify_webhook_secret, raw, header(headers, "X-Shopify-Hmac-Sha256")
    )
    payload = parse_json(raw)
    if topic == "orders/paid":
        return await orders_paid(service, payload)
    if topic == "refunds/create":
        return await refunds_create(service, payload)
    return {"status": "ignored", "reason": f"topic {topic} is not handled"}
