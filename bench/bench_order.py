"""Order intake throughput, REST and topic, with p50/p99, on the embedded stack started for
the run (SQLite, embedded broker and Redis; ``TUIKE_BENCH_MYSQL_URL`` points it at MySQL).

Figures printed (never pass/fail):
- baseline: ``GET /api/v1/orders/{id}`` through the gateway (the read path, same stack);
- REST intake: ``POST /api/v1/orders`` through the gateway, each with its attribution call to
  the user service, ``TUIKE_BENCH_CONCURRENCY`` requests in flight; and the same straight to
  the order service (without the gateway's hop, auth and rate limits);
- topic intake: ``order.placed`` envelopes produced to ``platform.orders``; latency is from
  the produce acknowledgement to the order's ``created_at`` (same clock), throughput from the
  first produce to the last order stored.
Sizes: ``TUIKE_BENCH_ORDERS`` (default 300) per mode.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from deploy.local.stack import Stack, StackConfig
from libs.common.messaging.envelope import make_event
from libs.common.messaging.kafka import make_producer
from libs.common.settings import CommonSettings


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _report(name: str, count: int, seconds: float, latencies: list[float]) -> None:
    print(
        f"{name:<28} {count:>6} in {seconds:6.2f}s = {count / seconds:8.1f}/s   "
        f"p50 {_percentile(latencies, 0.5) * 1000:7.1f} ms   "
        f"p99 {_percentile(latencies, 0.99) * 1000:7.1f} ms",
        flush=True,
    )


def _body(buyer: str, order_no: str) -> dict[str, Any]:
    return {
        "platform": "bench",
        "order_no": order_no,
        "buyer_user_id": buyer,
        "currency": "CNY",
        "items": [
            {
                "sku": "A",
                "category": "c",
                "quantity": 1,
                "unit_price_amount": 1999,
                "paid_amount": 1999,
            },
            {
                "sku": "B",
                "category": "c",
                "quantity": 2,
                "unit_price_amount": 500,
                "paid_amount": 900,
            },
        ],
    }


async def _timed(client: httpx.AsyncClient, method: str, url: str, **kw: Any) -> float:
    started = time.perf_counter()
    response = await client.request(method, url, **kw)
    if response.status_code >= 300:
        raise RuntimeError(f"{method} {url}: {response.status_code} {response.text[:200]}")
    return time.perf_counter() - started


async def _run_concurrently(jobs: list[Any], concurrency: int) -> tuple[float, list[float]]:
    gate = asyncio.Semaphore(concurrency)

    async def one(job: Any) -> float:
        async with gate:
            return float(await job())

    started = time.perf_counter()
    latencies = await asyncio.gather(*(one(job) for job in jobs))
    return time.perf_counter() - started, list(latencies)


async def _bench(stack: Stack, count: int, concurrency: int) -> None:
    headers = {"Authorization": f"Bearer {stack.config.admin_key}"}
    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers=headers, timeout=60, limits=limits
    ) as client:
        promoter = (await client.post("/api/v1/users", json={"external_id": "bench-p"})).json()
        await client.post("/api/v1/promoters", json={"user_id": promoter["id"]})
        code = (await client.post(f"/api/v1/promoters/{promoter['id']}/approve")).json()["code"]
        buyers = []
        for n in range(20):
            buyer = (await client.post("/api/v1/users", json={"external_id": f"bench-b{n}"})).json()
            await client.post(
                "/api/v1/relations/bind",
                json={"user_id": buyer["id"], "promoter_code": code, "source": "link"},
            )
            buyers.append(buyer["id"])
        tag = secrets.token_hex(3)
        # Warm-up (connections, caches), not measured.
        for n in range(10):
            await client.post("/api/v1/orders", json=_body(buyers[n % 20], f"W-{tag}-{n}"))

        rest_jobs = [
            (
                lambda n=n: _timed(
                    client, "POST", "/api/v1/orders", json=_body(buyers[n % 20], f"R-{tag}-{n}")
                )
            )
            for n in range(count)
        ]
        rest_seconds, rest_latencies = await _run_concurrently(rest_jobs, concurrency)

        direct_headers = {"Authorization": f"Bearer {stack.config.internal_key}"}
        async with httpx.AsyncClient(
            base_url=stack.service_url("order"), headers=direct_headers, timeout=60, limits=limits
        ) as direct:
            direct_jobs = [
                (
                    lambda n=n: _timed(
                        direct, "POST", "/api/v1/orders", json=_body(buyers[n % 20], f"D-{tag}-{n}")
                    )
                )
                for n in range(count)
            ]
            direct_seconds, direct_latencies = await _run_concurrently(direct_jobs, concurrency)

        first = (await client.get(f"/api/v1/orders/by-number/bench/R-{tag}-0")).json()["id"]
        read_jobs = [
            (lambda: _timed(client, "GET", f"/api/v1/orders/{first}")) for _ in range(count)
        ]
        read_seconds, read_latencies = await _run_concurrently(read_jobs, concurrency)

        producer = make_producer(CommonSettings(kafka_bootstrap_servers=stack.kafka))
        await producer.start()
        produced_at: dict[str, datetime] = {}
        started_wall = datetime.now(UTC)
        try:
            futures = []
            for n in range(count):
                order_no = f"T-{tag}-{n}"
                event = make_event(
                    "order.placed",
                    order_no,
                    key=order_no,
                    data=_body(buyers[n % 20], order_no),
                    source="bench",
                )
                futures.append(
                    (
                        order_no,
                        await producer.send(
                            "platform.orders", value=event.to_bytes(), key=order_no.encode()
                        ),
                    )
                )
            for order_no, future in futures:
                await future
                produced_at[order_no] = datetime.now(UTC)
        finally:
            await producer.stop()
        pending = set(produced_at)
        created: dict[str, datetime] = {}
        deadline = time.monotonic() + 300

        async def look(order_no: str) -> None:
            response = await client.get(f"/api/v1/orders/by-number/bench/{order_no}")
            if response.status_code == 200:
                created[order_no] = datetime.fromisoformat(response.json()["created_at"])
                pending.discard(order_no)

        gate = asyncio.Semaphore(concurrency)

        async def guarded(order_no: str) -> None:
            async with gate:
                await look(order_no)

        while pending and time.monotonic() < deadline:
            await asyncio.gather(*(guarded(n) for n in sorted(pending)))
            if pending:
                await asyncio.sleep(0.2)
        # Throughput from the first produce to the last order stored (its created_at).
        last_stored = max(created.values(), default=started_wall)
        topic_seconds = max(1e-6, (last_stored - started_wall).total_seconds())
        # Stragglers may have been stored before we polled them: their created_at is exact.
        topic_latencies = [max(0.0, (created[n] - produced_at[n]).total_seconds()) for n in created]
    print(
        f"orders per mode: {count}, REST concurrency: {concurrency}, backend: "
        f"{'mysql' if stack.config.mysql_url else 'sqlite'}"
    )
    _report("baseline GET order (REST)", count, read_seconds, read_latencies)
    _report("intake REST POST /orders", count, rest_seconds, rest_latencies)
    _report("  same, order service direct", count, direct_seconds, direct_latencies)
    if pending:
        print(f"topic intake: {len(pending)} orders not stored within the deadline")
    _report("intake topic platform.orders", len(created), topic_seconds, topic_latencies)


def main() -> None:
    count = int(os.environ.get("TUIKE_BENCH_ORDERS", "300"))
    concurrency = int(os.environ.get("TUIKE_BENCH_CONCURRENCY", "16"))
    with tempfile.TemporaryDirectory(prefix="tuike-bench-order-") as tmp:
        config = StackConfig.for_tests(
            Path(tmp), mysql_url=os.environ.get("TUIKE_BENCH_MYSQL_URL"), redis_url=None
        )
        config.fault_injection = False
        stack = Stack(config)
        stack.start(timeout=120)
        try:
            asyncio.run(_bench(stack, count, concurrency))
        finally:
            stack.stop()
            if config.mysql_url:
                asyncio.run(stack.drop_databases())


if __name__ == "__main__":
    main()
