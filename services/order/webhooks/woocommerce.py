"""WooCommerce order webhooks (topics ``order.created`` / ``order.updated``): the whole
order on every change. Verified by X-WC-Webhook-Signature, the base64 HMAC-SHA256 of the
raw body with the webhook's secret (TUIKE_WOOCOMMERCE_WEBHOOK_SECRET).

The order's WooCommerce status decides the moves: ``processing`` (or a ``date_paid``) pays,
``completed`` pays and completes, ``cancelled`` / ``failed`` close an unpaid order; each entry
of ``refunds`` is an order-level refund (refund_no = its id) spread over the items.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from libs.common.errors import BadRequest
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

PAID_STATUSES = {"processing", "completed", "refunded"}
CLOSED_STATUSES = {"cancelled", "failed"}
CODE_KEYS = ("promoter_code", "tuike_code", "_promoter_code")


def _line_sku(line: Mapping[str, Any]) -> str:
    if line.get("sku"):
        return str(line["sku"])[:100]
    return f"product:{line.get('product_id')}:{line.get('variation_id') or 0}"


def _promoter_code(payload: Mapping[str, Any]) -> str | None:
    for meta in payload.get("meta_data") or []:
        if meta.get("key") in CODE_KEYS and meta.get("value"):
            return str(meta["value"])[:64]
    return None


def map_order(payload: Mapping[str, Any], platform: str, buyer: int) -> OrderIn:
    """Item paid = its ``total`` (after coupons, before tax); unit price = its ``subtotal``
    (before coupons) per unit, rounded up to the minor unit so paid ≤ quantity × unit."""
    currency = str(payload.get("currency") or "").upper()
    lines = payload.get("line_items") or []
    if not lines:
        raise BadRequest("the WooCommerce order has no line items", code="webhook.invalid_body")
    skus = unique_skus([(_line_sku(line), str(line.get("id"))) for line in lines])
    items = []
    for index, (line, sku) in enumerate(zip(lines, skus, strict=True)):
        quantity = int(line.get("quantity") or 0)
        subtotal = minor(line.get("subtotal"), currency, f"line_items[{index}].subtotal")
        paid = minor(line.get("total"), currency, f"line_items[{index}].total")
        unit = -(-max(subtotal, paid) // quantity) if quantity > 0 else 0
        items.append(
            {
                "sku": sku,
                "category": "default",
                "quantity": quantity,
                "unit_price_amount": unit,
                "paid_amount": paid,
            }
        )
    return OrderIn.model_validate(
        {
            "platform": platform,
            "order_no": str(payload.get("id")),
            "buyer_user_id": buyer,
            "promoter_code": _promoter_code(payload),
            "currency": currency,
            "items": items,
            "shipping_amount": minor(payload.get("shipping_total"), currency, "shipping_total"),
        }
    )


def _customer(payload: Mapping[str, Any]) -> tuple[str, str | None, str | None]:
    billing = payload.get("billing") or {}
    name = " ".join(str(billing[k]) for k in ("first_name", "last_name") if billing.get(k))
    if payload.get("customer_id"):
        return str(payload["customer_id"]), name or None, billing.get("phone")
    if billing.get("email"):
        # A guest checkout: the e-mail is the only stable key the shop gives us.
        return f"guest:{str(billing['email']).lower()}", name or None, billing.get("phone")
    raise BadRequest("the WooCommerce order names no customer", code="webhook.no_customer")


async def order_changed(service: OrderService, payload: Mapping[str, Any]) -> dict[str, Any]:
    platform = service.settings.woocommerce_platform
    external_id, nickname, phone = _customer(payload)
    buyer = await buyer_id(service, platform, external_id, nickname, phone)
    order, created, changed = await take_in(service, map_order(payload, platform, buyer))
    status = str(payload.get("status") or "")
    steps: dict[str, str] = {}
    if status in PAID_STATUSES or payload.get("date_paid_gmt") or payload.get("date_paid"):
        paid_at = parse_time(payload.get("date_paid_gmt"))
        steps["pay"] = await attempt("pay", service.pay(order.id, paid_at))
    if status == "completed":
        completed_at = parse_time(payload.get("date_completed_gmt"))
        steps["complete"] = await attempt("complete", service.complete(order.id, completed_at))
    if status in CLOSED_STATUSES:
        steps["close"] = await attempt("close", service.close(order.id))
    _, recorded = await service.refunds_of(order.id)
    known = {r["refund_no"] for r in recorded}
    for refund in payload.get("refunds") or []:
        if str(refund.get("id")) in known:
            continue  # the update that told us first already took it in
        amount = abs(minor(refund.get("total"), order.currency, "refunds.total"))
        current = await service.get(order.id)
        # A WooCommerce refund may include shipping and tax: only the items' part counts.
        amount = min(amount, sum(i.remaining_amount for i in current.items))
        if amount <= 0 or current.status not in ("paid", "completed"):
            continue
        body = RefundIn(refund_no=str(refund.get("id")), amount=amount)
        steps[f"refund:{refund.get('id')}"] = await attempt(
            "refund", service.refund(order.id, body)
        )
    return {
        "status": "accepted",
        "order_id": str(order.id),
        "created": created,
        "body_changed": changed,
        "steps": steps,
    }


async def handle(service: OrderService, raw: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """Verify, then apply; a ping (form body ``webhook_id=…``) and other topics are
    acknowledged and ignored."""
    verify_base64_hmac(
        service.settings.woocommerce_webhook_secret,
        raw,
        header(headers, "X-WC-Webhook-Signature"),
    )
    topic = header(headers, "X-WC-Webhook-Topic") or ""
    if raw.startswith(b"webhook_id="):
        return {"status": "ignored", "reason": "ping"}
    if topic not in ("order.created", "order.updated"):
        return {"status": "ignored", "reason": f"topic {topic or '(none)'} is not handled"}
    return await order_changed(service, parse_json(raw))
