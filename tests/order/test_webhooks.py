"""Platform adapters: the mapping of real webhook bodies to our order model, and refused
signatures (nothing stored)."""

from __future__ import annotations

from datetime import datetime

import orjson
import pytest

from libs.common.errors import Unauthorized
from services.order.records import Item, Order
from services.order.service import OrderService
from services.order.webhooks import shopify, woocommerce
from services.order.webhooks.common import sign
from tests.order.webhook_payloads import shopify_order, shopify_refund, woocommerce_order


def test_shopify_order_maps_prices_to_minor_units_net_of_discounts() -> None:
    body = shopify.map_order(shopify_order(450789469, 207119551, "PX1"), "shopify", 42)
    assert body.order_no == "450789469" and body.currency == "USD"
    assert body.promoter_code == "PX1"
    assert [
        (i.sku, i.category, i.quantity, i.unit_price_amount, i.paid_amount) for i in body.items
    ] == [
        ("IPOD-342-N", "electronics", 2, 19999, 39998 - 2000),
        ("variant:49148385", "default", 1, 550, 500),
    ]
    assert body.shipping_amount == 800


def test_shopify_line_refund_names_the_item() -> None:
    order = Order(
        1,
        "shopify",
        "450789469",
        42,
        "USD",
        "paid",
        None,
        None,
        [],
        "none",
        800,
        36498,
        0,
        "",
        datetime(2026, 1, 1),
        None,
        None,
        None,
    )
    order.items = [
        Item(10, "IPOD-342-N", "electronics", 2, 19999, 35998, 0),
        Item(11, "variant:49148385", "default", 1, 550, 500, 0),
    ]
    refund = shopify.map_refund(shopify_refund(509562969, 450789469), order)
    assert refund is not None
    assert refund.refund_no == "509562969"
    assert [(i.sku, i.amount) for i in refund.items or []] == [("IPOD-342-N", 18999)]


def test_woocommerce_order_maps_totals_and_guest_buyers() -> None:
    body = woocommerce.map_order(woocommerce_order(727, 9, "processing"), "woocommerce", 42)
    assert body.currency == "EUR" and body.order_no == "727"
    assert [(i.sku, i.quantity, i.unit_price_amount, i.paid_amount) for i in body.items] == [
        ("WOO-HOODIE", 3, 3000, 8100),
        ("product:22:23", 1, 1001, 1001),
    ]
    assert body.shipping_amount == 490
    guest = woocommerce_order(728, 0, "pending")
    assert woocommerce._customer(guest)[0] == "guest:g@example.com"


async def test_bad_signatures_are_refused_and_nothing_is_stored(orders: OrderService) -> None:
    raw = orjson.dumps(shopify_order(1, 2))
    for signature in (None, "", "bm90IGEgc2lnbmF0dXJl", sign("other-secret", raw)):
        headers = {"X-Shopify-Hmac-Sha256": signature} if signature is not None else {}
        with pytest.raises(Unauthorized) as refused:
            await shopify.handle(orders, "orders/paid", raw, headers)
        assert refused.value.code == "webhook.bad_signature"
    woo = orjson.dumps(woocommerce_order(3, 4, "processing"))
    with pytest.raises(Unauthorized):
        await woocommerce.handle(
            orders,
            woo,
            {
                "X-WC-Webhook-Signature": sign("shopify-secret", woo),
                "X-WC-Webhook-Topic": "order.created",
            },
        )
    # A body altered after signing fails too.
    signed = sign("woo-secret", woo)
    with pytest.raises(Unauthorized):
        await woocommerce.handle(
            orders,
            woo + b" ",
            {"X-WC-Webhook-Signature": signed, "X-WC-Webhook-Topic": "order.created"},
        )
    async with orders.db.read() as conn:
        from sqlalchemy import func, select

        from libs.common.db.global_index import global_index

        assert await conn.scalar(select(func.count()).select_from(global_index)) == 0


async def test_woocommerce_ping_is_acknowledged(orders: OrderService) -> None:
    raw = b"webhook_id=15"
    result = await woocommerce.handle(
        orders, raw, {"X-WC-Webhook-Signature": sign("woo-secret", raw)}
    )
    assert result == {"status": "ignored", "reason": "ping"}
