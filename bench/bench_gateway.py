"""What the gateway costs: the same read (GET /api/v1/users/{id}) straight to the user
service and through the gateway, side by side in one run, on a fresh embedded stack.

Through the gateway it is measured twice: with the bootstrap admin key (authentication only;
admins skip rate limits) and with a promoter JWT (JWT verification, the permission table, a
Redis token bucket and the masking scan). Goal: the gateway adds < 30%.

Two kinds of figures, because this machine has 2 cores shared with other work:

- wall clock: requests/s, p50 and p99 of each path (noisy when other processes run);
- CPU seconds per 1,000 requests of the gateway, the user-service and the Redis processes,
  read from /proc/<pid>/stat (utime + stime) before and after each run. They depend far
  less on what else the machine does, so the gateway's cost relative to the service's own
  cost is the robust figure (under heavy contention every process spends a little more per
  request: fewer requests per event-loop turn, more wake-ups).

The client is aiohttp in its own process(es); the bench prints the client's CPU use too, so
a client that saturates a core (and makes both paths client-bound) is visible. The four
paths take turns in short runs (``TUIKE_BENCH_ROUNDS`` rounds of ``TUIKE_BENCH_SECONDS``
each), and each path's figures are pooled over its rounds: load from other processes, which
comes and goes over seconds, then falls on all paths alike instead of on whichever ran
during a busy spell.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.pool
import os
import secrets
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from deploy.local.stack import Stack, StackConfig
from libs.common.auth import make_token
from libs.common.settings import CommonSettings

CONCURRENCY = int(os.environ.get("TUIKE_BENCH_CONCURRENCY", "16"))
SECONDS = float(os.environ.get("TUIKE_BENCH_SECONDS", "1.5"))
ROUNDS = int(os.environ.get("TUIKE_BENCH_ROUNDS", "8"))
# Client processes sharing the concurrency (more than one only if one saturates a core).
CLIENTS = int(os.environ.get("TUIKE_BENCH_CLIENTS", "1"))
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # After the ")" closing the command name: state is field 3, utime 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class Sample:
    count: int
    errors: int
    elapsed: float
    latencies: list[float]
    client_cpu: float


async def _client_load(url: str, headers: dict[str, str], concurrency: int) -> Sample:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:

        async def get() -> int:
            async with session.get(url) as response:
                await response.read()
                return response.status

        await asyncio.gather(*(get() for _ in range(concurrency)))  # open the connections
        for _ in range(20):  # warm the caches
            await get()
        deadline = time.perf_counter() + SECONDS

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                status = await get()
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors += 1

        cpu_before = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        client_cpu = time.process_time() - cpu_before
    return Sample(len(latencies), errors, elapsed, latencies, client_cpu)


def _client_process(url: str, headers: dict[str, str], concurrency: int) -> Sample:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - the plain loop works, only slower
        pass
    return asyncio.run(_client_load(url, headers, concurrency))


@dataclass
class Run:
    """One path's figures, pooled over all its rounds."""

    count: int = 0
    served: int = 0  # count + warm-up requests (they cost server CPU too)
    elapsed: float = 0.0
    errors: int = 0
    client_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.count / self.elapsed

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1000

    def cpu_per_1k(self, process: str) -> float:
        return 1000 * self.cpu.get(process, 0.0) / self.served


def measure(
    pool: multiprocessing.pool.Pool,
    url: str,
    headers: dict[str, str],
    pids: dict[str, int],
    into: Run,
) -> None:
    per_client = [CONCURRENCY // CLIENTS + (i < CONCURRENCY % CLIENTS) for i in range(CLIENTS)]
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    samples: list[Sample] = pool.starmap(_client_process, [(url, headers, n) for n in per_client])
    after = {name: cpu_seconds(pid) for name, pid in pids.items()}
    count = sum(s.count for s in samples)
    into.count += count
    into.served += count + sum(n + 20 for n in per_client)
    elapsed = max(s.elapsed for s in samples)
    into.elapsed += elapsed
    into.errors += sum(s.errors for s in samples)
    into.client_cpu += max(s.client_cpu for s in samples)
    into.latencies.extend(x for s in samples for x in s.latencies)
    for name in pids:
        into.cpu[name] = into.cpu.get(name, 0.0) + after[name] - before[name]


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
            pids = {name: stack.pid(name) for name in ("gateway", "user", "redis")}
            runs = [
                ("direct, admin key", stack.service_url("user"), admin),
                ("gateway, admin key", stack.gateway_url, admin),
                ("direct, promoter JWT", stack.service_url("user"), promoter),
                ("gateway, promoter JWT", stack.gateway_url, promoter),
            ]
            print(
                f"GET {path}, {CONCURRENCY} concurrent clients in {CLIENTS} process(es), "
                f"{ROUNDS} interleaved rounds of {SECONDS:g}s per path (figures pooled)"
            )
            results = {label: Run() for label, _, _ in runs}
            context = multiprocessing.get_context("spawn")
            with context.Pool(CLIENTS) as pool:
                for _ in range(ROUNDS):
                    for label, base, headers in runs:
                        measure(pool, f"{base}{path}", headers, pids, results[label])
            _report(results)


def _report(results: dict[str, Run]) -> None:
    print(
        f"{'':24} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'client':>7}"
        f" {'gateway':>8} {'service':>8} {'redis':>8}   (CPU s per 1,000 requests)"
    )
    for label, r in results.items():
        print(
            f"{label:24} {r.rate:7.0f} {r.percentile_ms(0.5):7.2f} {r.percentile_ms(0.99):7.2f}"
            f" {r.errors:6d} {100 * r.client_cpu / r.elapsed:6.0f}%"
            f" {r.cpu_per_1k('gateway'):8.3f} {r.cpu_per_1k('user'):8.3f}"
            f" {r.cpu_per_1k('redis'):8.3f}"
        )
    for name in ("admin key", "promoter JWT"):
        direct, through = results[f"direct, {name}"], results[f"gateway, {name}"]
        fewer = 100 * (1 - through.rate / direct.rate)
        slower = 100 * (through.percentile_ms(0.99) / direct.percentile_ms(0.99) - 1)
        # What the gateway spends per request (with its rate-limit work in Redis, beyond
        # what the direct path made Redis do), against what the service spends on the read.
        redis_added = max(0.0, through.cpu_per_1k("redis") - direct.cpu_per_1k("redis"))
        added = through.cpu_per_1k("gateway") + redis_added
        cpu = 100 * added / direct.cpu_per_1k("user")
        print(
            f"gateway overhead, {name}: {fewer:.0f}% fewer req/s, p99 {slower:+.0f}%, "
            f"gateway CPU (+ its Redis work) = {cpu:.0f}% of the service's CPU per request"
        )


if __name__ == "__main__":
    main()
