"""Helpers of the order end-to-end tests: users and promoters through the gateway, and the
order.events a real consumer would read from the stack's broker."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from deploy.local.stack import Stack


def new_user(api: httpx.Client, platform: str = "default") -> str:
    response = api.post(
        "/api/v1/users", json={"external_id": f"u-{secrets.token_hex(6)}", "platform": platform}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def new_promoter(api: httpx.Client, parent_code: str | None = None) -> tuple[str, str]:
    """A user made an approved promoter (bound under ``parent_code`` first); (id, code)."""
    user_id = new_user(api)
    if parent_code:
        bind(api, user_id, parent_code)
    response = api.post("/api/v1/promoters", json={"user_id": user_id})
    assert response.status_code in (200, 201), response.text
    approved = api.post(f"/api/v1/promoters/{user_id}/approve")
    assert approved.status_code == 200, approved.text
    return user_id, str(approved.json()["code"])


def bind(api: httpx.Client, user_id: str, code: str) -> None:
    response = api.post(
        "/api/v1/relations/bind", json={"user_id": user_id, "promoter_code": code, "source": "link"}
    )
    assert response.status_code == 200, response.text


def order_json(buyer: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "platform": "e2e",
        "order_no": f"E-{secrets.token_hex(6)}",
        "buyer_user_id": buyer,
        "currency": "CNY",
        "items": [
            {
                "sku": "A",
                "category": "books",
                "quantity": 2,
                "unit_price_amount": 5000,
                "paid_amount": 9000,
            },
            {
                "sku": "B",
                "category": "toys",
                "quantity": 1,
                "unit_price_amount": 3001,
                "paid_amount": 3001,
            },
        ],
        "shipping_amount": 1000,
    }
    body.update(overrides)
    return body


async def _read_topic(
    bootstrap: str, topic: str, key: str, wanted: int, seconds: float
) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer.client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=300, max_records=5000)
            for records in batches.values():
                for record in records:
                    if record.key == key.encode():
                        found.append(orjson.loads(record.value or b"{}"))
            if len(found) >= wanted and not batches:
                break
        return found
    finally:
        await consumer.stop()


def topic_events(stack: Stack, key: str, wanted: int, timeout: float = 20) -> list[dict[str, Any]]:
    """Every event keyed ``key`` on order.events (a republish may repeat one: deduplicated
    by event id, as consumers' inboxes do), waiting until at least ``wanted`` distinct ones."""
    deadline = time.monotonic() + timeout
    while True:
        raw = asyncio.run(_read_topic(stack.kafka, "order.events", key, wanted, 3))
        unique: dict[str, dict[str, Any]] = {}
        for event in raw:
            unique.setdefault(event["id"], event)
        if len(unique) >= wanted or time.monotonic() > deadline:
            return list(unique.values())
        time.sleep(0.3)


def wait_for(check: Any, timeout: float = 30, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(every)
