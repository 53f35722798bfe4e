"""Webhook bodies shaped as Shopify and WooCommerce send them (fields we do not read
trimmed)."""

from __future__ import annotations

from typing import Any


def shopify_order(order_id: int, customer_id: int, code: str | None = None) -> dict[str, Any]:
    return {
        "id": order_id,
        "name": "#1001",
        "order_number": 1001,
        "currency": "USD",
        "processed_at": "2026-11-20T10:00:00-05:00",
        "financial_status": "paid",
        "email": "buyer@example.com",
        "customer": {
            "id": customer_id,
            "email": "buyer@example.com",
            "first_name": "Ada",
            "last_name": "Lovelace",
            "phone": "+16135550101",
        },
        "line_items": [
            {
                "id": 866550311766439020,
                "variant_id": 808950810,
                "sku": "IPOD-342-N",
                "product_type": "electronics",
                "quantity": 2,
                "price": "199.99",
                "total_discount": "0.00",
                "discount_allocations": [{"amount": "20.00", "discount_application_index": 0}],
            },
            {
                "id": 141249953214522974,
                "variant_id": 49148385,
                "sku": "",
                "quantity": 1,
                "price": "5.50",
                "total_discount": "0.50",
                "discount_allocations": [],
            },
        ],
        "shipping_lines": [{"id": 1, "price": "10.00", "discounted_price": "8.00"}],
        "note_attributes": [{"name": "promoter_code", "value": code}] if code else [],
    }


def shopify_refund(refund_id: int, order_id: int) -> dict[str, Any]:
    return {
        "id": refund_id,
        "order_id": order_id,
        "created_at": "2026-11-21T10:00:00-05:00",
        "refund_line_items": [
            {
                "id": 1,
                "line_item_id": 866550311766439020,
                "quantity": 1,
                "subtotal": "189.99",
                "total_tax": "0.00",
                "line_item": {
                    "id": 866550311766439020,
                    "sku": "IPOD-342-N",
                    "variant_id": 808950810,
                },
            }
        ],
        "transactions": [{"amount": "189.99", "kind": "refund", "status": "success"}],
        "order_adjustments": [],
    }


def woocommerce_order(
    order_id: int, customer_id: int, status: str, refunds: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "id": order_id,
        "number": str(order_id),
        "status": status,
        "currency": "EUR",
        "customer_id": customer_id,
        "date_paid_gmt": "2026-11-20T09:00:00" if status != "pending" else None,
        "date_completed_gmt": "2026-11-22T09:00:00" if status == "completed" else None,
        "billing": {
            "first_name": "Grace",
            "last_name": "Hopper",
            "email": "g@example.com",
            "phone": "",
        },
        "shipping_total": "4.90",
        "line_items": [
            {
                "id": 315,
                "product_id": 93,
                "variation_id": 0,
                "sku": "WOO-HOODIE",
                "quantity": 3,
                "subtotal": "90.00",
                "total": "81.00",
                "price": 30,
            },
            {
                "id": 316,
                "product_id": 22,
                "variation_id": 23,
                "sku": "",
                "quantity": 1,
                "subtotal": "10.01",
                "total": "10.01",
                "price": 10.01,
            },
        ],
        "meta_data": [],
        "refunds": refunds or [],
    }
