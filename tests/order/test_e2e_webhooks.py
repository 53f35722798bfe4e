"""Shopify and WooCommerce webhooks through the gateway (public routes that check their own
signatures), with the real user service creating unknown buyers."""

from __future__ import annotations

import secrets

import httpx
import orjson

from deploy.local.stack import Stack
from services.order.webhooks.common import sign
from tests.order.e2e_helpers import new_promoter
from tests.order.webhook_payloads import shopify_order, shopify_refund, woocommerce_order


def _post(stack: Stack, path: str, raw: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{stack.gateway_url}{path}",
        content=raw,
        headers={"Content-Type": "application/json", **headers},
        timeout=30,
    )


def test_shopify_orders_paid_and_refunds_create(stack: Stack, api: httpx.Client) -> None:
    secret = stack.config.shopify_webhook_secret
    promoter, code = new_promoter(api)
    order_id, customer_id = secrets.randbelow(10**12) + 1, secrets.randbelow(10**9) + 1
    raw = orjson.dumps(shopify_order(order_id, customer_id, code))
    headers = {"X-Shopify-Hmac-Sha256": sign(secret, raw), "X-Shopify-Topic": "orders/paid"}
    forged = _post(
        stack, "/api/v1/webhooks/shopify/orders/paid", raw, {"X-Shopify-Hmac-Sha256": "AAAA"}
    )
    assert forged.status_code == 401
    assert forged.json()["error"]["code"] == "webhook.bad_signature"
    assert api.get(f"/api/v1/orders/by-number/shopify/{order_id}").status_code == 404
    accepted = _post(stack, "/api/v1/webhooks/shopify/orders/paid", raw, headers)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["created"] is True
    # Shopify retries deliveries: the same body changes nothing.
    again = _post(stack, "/api/v1/webhooks/shopify/orders/paid", raw, headers)
    assert (
        again.json()["order_id"] == accepted.json()["order_id"] and again.json()["created"] is False
    )
    order = api.get(f"/api/v1/orders/by-number/shopify/{order_id}").json()
    assert order["status"] == "paid" and order["currency"] == "USD"
    assert order["promoter_id"] == promoter
    assert [i["paid_amount"] for i in order["items"]] == [37998, 500]
    buyer = api.get(f"/api/v1/users/{order['buyer_user_id']}").json()
    assert buyer["platform"] == "shopify" and buyer["external_id"] == str(customer_id)
    refund_raw = orjson.dumps(shopify_refund(secrets.randbelow(10**9) + 1, order_id))
    refund_headers = {"X-Shopify-Hmac-Sha256": sign(secret, refund_raw)}
    refunded = _post(stack, "/api/v1/webhooks/shopify/refunds/create", refund_raw, refund_headers)
    assert refunded.status_code == 200, refunded.text
    replayed = _post(stack, "/api/v1/webhooks/shopify/refunds/create", refund_raw, refund_headers)
    assert replayed.json()["refund_id"] == refunded.json()["refund_id"]
    after = api.get(f"/api/v1/orders/{order['id']}").json()
    assert after["refunded_amount"] == 18999
    assert [i["refunded_amount"] for i in after["items"]] == [18999, 0]


def test_woocommerce_order_through_its_statuses(stack: Stack, api: httpx.Client) -> None:
    secret = stack.config.woocommerce_webhook_secret
    order_id, customer_id = secrets.randbelow(10**9) + 1, secrets.randbelow(10**6) + 1

    def deliver(payload: dict[str, object], topic: str = "order.updated") -> httpx.Response:
        raw = orjson.dumps(payload)
        return _post(
            stack,
            "/api/v1/webhooks/woocommerce",
            raw,
            {"X-WC-Webhook-Signature": sign(secret, raw), "X-WC-Webhook-Topic": topic},
        )

    created = deliver(woocommerce_order(order_id, customer_id, "pending"), "order.created")
    assert created.status_code == 200, created.text
    base = f"/api/v1/orders/by-number/woocommerce/{order_id}"
    assert api.get(base).json()["status"] == "created"
    assert deliver(woocommerce_order(order_id, customer_id, "processing")).status_code == 200
    assert api.get(base).json()["status"] == "paid"
    refunds = [{"id": 901, "total": "-20.00", "reason": "damaged"}]
    done = deliver(woocommerce_order(order_id, customer_id, "completed", refunds))
    assert done.status_code == 200, done.text
    order = api.get(base).json()
    assert order["status"] == "completed"
    assert order["paid_amount"] == 9101 and order["refunded_amount"] == 2000
    # 2000 spread over 8100 and 1001: 1780.02 and 219.98 → 1780 and 220.
    assert [i["refunded_amount"] for i in order["items"]] == [1780, 220]
    # The same update delivered again changes nothing.
    assert (
        deliver(woocommerce_order(order_id, customer_id, "completed", refunds)).status_code == 200
    )
    assert api.get(base).json()["refunded_amount"] == 2000
    bad = _post(stack, "/api/v1/webhooks/woocommerce", b"{}", {"X-WC-Webhook-Signature": "x"})
    assert bad.status_code == 401
