"""What the gateway costs: requests/s and p99 of the same read (GET /api/v1/users/{id})
straight to the user service and through the gateway, side by side in one run, on a fresh
embedded stack. Through the gateway it is measured twice: with the bootstrap admin key
(authentication only; admins skip rate limits) and with a promoter JWT (JWT verification,
the permission table, a Redis token bucket and the masking scan). Goal: < 30% added."""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from deploy.local.stack import Stack, StackConfig
from libs.common.auth import make_token
from libs.common.settings import CommonSettings

CONCURRENCY = int(os.environ.get("TUIKE_BENCH_CONCURRENCY", "16"))
SECONDS = float(os.environ.get("TUIKE_BENCH_SECONDS", "5"))


async def _load(url: str, headers: dict[str, str]) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors) of GETs on ``url`` for SECONDS."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        for _ in range(20):  # warm the connections and the caches
            await client.get(url)
        deadline = time.perf_counter() + SECONDS

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.get(url)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, p99 * 1000, errors


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tuike-bench-gateway-") as tmp:
        config = StackConfig.for_tests(Path(tmp), mysql_url=None, redis_url=None)
        # The bench measures overhead, not the limiter refusing: lift the promoter bucket.
        config.extra_env.update(
            {"TUIKE_RATE_LIMIT_PER_SECOND": "1000000", "TUIKE_RATE_LIMIT_BURST": "1000000"}
        )
        stack = Stack(config)
        with stack.running(timeout=120):
            admin = {"Authorization": f"Bearer {config.admin_key}"}
            created = httpx.post(
                f"{stack.gateway_url}/api/v1/users",
                json={"external_id": secrets.token_hex(6), "phone": "13812341234"},
                headers=admin,
                timeout=30,
            )
            created.raise_for_status()
            user_id = created.json()["id"]
            settings = CommonSettings(jwt_secret=config.jwt_secret)
            promoter = {"Authorization": f"Bearer {make_token(settings, user_id, ['promoter'])}"}
            path = f"/api/v1/users/{user_id}"
            runs = [
                ("direct to the user service (admin key)", stack.service_url("user"), admin),
                ("through the gateway (admin key)", stack.gateway_url, admin),
                ("direct to the user service (promoter JWT)", stack.service_url("user"), promoter),
                ("through the gateway (promoter JWT)", stack.gateway_url, promoter),
            ]
            print(f"GET {path}, {CONCURRENCY} concurrent clients, {SECONDS:.0f}s each")
            print(f"{'':44} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
            results = []
            for label, base, headers in runs:
                rate, p50, p99, errors = asyncio.run(_load(f"{base}{path}", headers))
                results.append((rate, p99))
                print(f"{label:44} {rate:8.0f} {p50:8.2f} {p99:8.2f} {errors:7d}", flush=True)
            for name, (direct, through) in (
                ("admin key", (results[0], results[1])),
                ("promoter JWT", (results[2], results[3])),
            ):
                fewer = 100 * (1 - through[0] / direct[0])
                slower = 100 * (through[1] / direct[1] - 1)
                print(f"gateway overhead, {name}: {fewer:.0f}% fewer req/s, p99 {slower:+.0f}%")


if __name__ == "__main__":
    main()
