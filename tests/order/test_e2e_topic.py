"""Intake from the ``platform.orders`` topic through the real broker: the REST body inside
the §8 envelope, then the platform's moves by number; the snapshot is taken right after."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from deploy.local.stack import Stack
from libs.common.messaging.envelope import make_event
from libs.common.messaging.kafka import make_producer
from libs.common.settings import CommonSettings
from tests.order.e2e_helpers import bind, new_promoter, new_user, order_json, topic_events, wait_for


async def _produce(bootstrap: str, events: list[tuple[str, str, dict[str, Any]]]) -> None:
    producer = make_producer(CommonSettings(kafka_bootstrap_servers=bootstrap))
    await producer.start()
    try:
        for event_type, fact, data in events:
            # Keyed by the order number: one order's messages stay in order.
            key = str(data["order_no"])
            envelope = make_event(event_type, fact, key=key, data=data, source="platform")
            await producer.send_and_wait(
                "platform.orders", value=envelope.to_bytes(), key=envelope.key.encode()
            )
    finally:
        await producer.stop()


def test_orders_from_the_topic_are_taken_in_and_moved(stack: Stack, api: httpx.Client) -> None:
    promoter, code = new_promoter(api)
    buyer = new_user(api)
    bind(api, buyer, code)
    body = order_json(buyer, platform="topic")
    number = {"platform": "topic", "order_no": body["order_no"]}
    # Delivered twice (at least once): one order.
    asyncio.run(
        _produce(
            stack.kafka,
            [("order.placed", body["order_no"], body), ("order.placed", body["order_no"], body)],
        )
    )
    base = f"/api/v1/orders/by-number/topic/{body['order_no']}"
    order = wait_for(
        lambda: (
            (r := api.get(base)).status_code == 200
            and r.json()["attribution_status"] == "resolved"
            and r.json()
        )
    )
    assert order["promoter_id"] == promoter
    assert order["beneficiaries"] == [{"level": 1, "user_id": promoter}]
    asyncio.run(
        _produce(
            stack.kafka,
            [
                ("order.paid", f"{body['order_no']}:paid", number),
                (
                    "order.refunded",
                    f"{body['order_no']}:r1",
                    {**number, "refund_no": "T-R1", "items": [{"sku": "A", "amount": 900}]},
                ),
            ],
        )
    )
    refunded = wait_for(lambda: (o := api.get(base).json())["refunded_amount"] == 900 and o)
    assert refunded["status"] == "paid"
    events = topic_events(stack, order["id"], 3)
    assert [e["type"] for e in events] == ["order.created", "order.paid", "order.refunded"]
    assert events[1]["data"]["beneficiaries"] == [{"level": 1, "user_id": promoter}]
