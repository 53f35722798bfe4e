"""User service benchmark (issue 3): a random tree (default 200,000 users; the issue's figure
is 1,000,000: ``BENCH_USER_TREE_SIZE=1000000``) plus one chain 1,000 deep, seeded straight
into the database; then, through the service's HTTP API (a real uvicorn process): bind
throughput and latency at depth 1 vs depth 1,000 (and depth 3, see ``DEPTHS``), ancestors at
depth 1,000, a children page, the team size of the tree's root; and the same ancestor lookup
done the seed's way (a recursive CTE per query) measured in the same run as the baseline.

Environment: BENCH_USER_TREE_SIZE, BENCH_USER_CHAIN_DEPTH (1000), BENCH_USER_BINDS (2000 per
depth and concurrency), BENCH_USER_CONCURRENCY (callers in flight in the bind runs, "4,8,16"),
BENCH_USER_READS (500), BENCH_USER_MYSQL_URL (a MySQL /
MariaDB server URL: the run uses a fresh database there instead of SQLite),
BENCH_USER_WORKERS ("false": the service process serves HTTP only, as an API replica split from
its worker does; "true": it also runs its outbox relay and the team-counts consumer, as
``make run`` does, publishing to the broker the bench starts).
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from bench.http_client import BenchClient
from deploy.local.stack import free_port, tansu_binary, wait_port
from libs.common.db.engine import Database
from libs.common.db.global_index import global_index
from libs.common.db.migrations import migrate
from libs.common.ids import SHARD_COUNT, IdGenerator
from libs.common.messaging.outbox import utcnow
from services.user import paths
from services.user.migrations import MIGRATIONS
from services.user.models import promoters, relations, team_counts, users
from services.user.relations import read_path


def _env(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# Concurrent clients of the bind runs: few for latency (Little's law: at 2,000 binds/s,
# 16 callers in flight wait 8 ms on average whatever the server does), more for throughput.
CONCURRENCIES = [int(c) for c in os.environ.get("BENCH_USER_CONCURRENCY", "4,8,16").split(",")]
# Binds at each depth before the measured runs: the first requests of a process pay for
# compiling statements and filling caches.
WARM_UP_BINDS = 300
ROUNDS = 3  # turns of the depths per concurrency (rates are their medians)
# Where the bound users' promoters stand: the tree's root (depth 1, the issue's baseline), a
# user at depth 3 and the tip of the chain (depth 1,000). A bind changes the level 1-3 counts of
# up to three ancestors, and the root has none above it: depth 3 is the first depth at which a
# bind does all the work it ever does except for the path's length, so depth 1,000 against
# depth 3 shows what the path's length alone costs.
DEPTHS = ("depth1", "depth3", "depth1000")


def _pct(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))] * 1000


def _line(label: str, samples: list[float]) -> str:
    return (
        f"{label:<48} p50 {_pct(samples, 50):7.2f} ms  p99 {_pct(samples, 99):7.2f} ms"
        f"  (n={len(samples)})"
    )


async def _insert(db: Database, rows_by_table: dict[Any, list[dict[str, Any]]]) -> None:
    async with db.primary.begin() as conn:
        for table, rows in rows_by_table.items():
            for start in range(0, len(rows), 5000):
                await conn.execute(table.insert(), rows[start : start + 5000])


class Seed:
    def __init__(self, size: int, chain_depth: int, fresh: int) -> None:
        self.size, self.chain_depth, self.fresh = size, chain_depth, fresh
        self.ids = IdGenerator(1)
        self.tree_root = 0
        self.chain_tip = 0
        self.third_level = 0  # a user at depth 3 of the random tree
        self.deep_user = 0  # a chain member at depth chain_depth
        self.busy_parent = 0
        self.codes: dict[str, str] = {}
        self.fresh_users: list[int] = []

    async def load(self, db: Database) -> None:
        rng = random.Random(42)
        now = utcnow()
        n = self.size
        node_ids = [self.ids.next_id() for _ in range(n)]
        parent_index = [-1] + [rng.randrange(0, i) for i in range(1, n)]
        depth_path: list[str] = [""] * n
        level1 = [0] * n
        level2 = [0] * n
        level3 = [0] * n
        team = [0] * n
        for i in range(n):
            p = parent_index[i]
            depth_path[i] = (
                paths.root_path(node_ids[i])
                if p < 0
                else paths.child_path(depth_path[p], node_ids[i])
            )
        for i in range(n - 1, 0, -1):
            p = parent_index[i]
            level1[p] += 1
            level2[p] += level1[i]
            level3[p] += level2[i]
            team[p] += 1 + team[i]
        self.tree_root = node_ids[0]
        self.third_level = next(node_ids[i] for i in range(n) if paths.depth_of(depth_path[i]) == 3)
        self.busy_parent = node_ids[max(range(n), key=lambda i: level1[i])]
        # The chain hangs under the tree's root: its tip is at depth chain_depth.
        chain = [self.ids.next_id() for _ in range(self.chain_depth - 1)]
        chain_paths = []
        prefix = depth_path[0]
        for node in chain:
            prefix = paths.child_path(prefix, node)
            chain_paths.append(prefix)
        self.chain_tip = chain[-1]
        self.fresh_users = [self.ids.next_id() for _ in range(self.fresh)]
        per_table: dict[Any, list[dict[str, Any]]] = {}

        def add(table: Any, row: dict[str, Any]) -> None:
            per_table.setdefault(table, []).append(row)

        everyone = node_ids + chain + self.fresh_users
        for user_id in everyone:
            add(
                users.for_id(user_id),
                {
                    "id": user_id,
                    "platform": "bench",
                    "external_id": str(user_id),
                    "nickname": None,
                    "phone": None,
                    "device_id": None,
                    "created_at": now,
                },
            )
        relation_rows = [
            (node_ids[i], node_ids[parent_index[i]], depth_path[i]) for i in range(1, n)
        ] + [
            (node, (chain[k - 1] if k else node_ids[0]), chain_paths[k])
            for k, node in enumerate(chain)
        ]
        for user_id, parent_id, path in relation_rows:
            add(
                relations.for_id(user_id),
                {
                    "user_id": user_id,
                    "parent_id": parent_id,
                    "root_id": node_ids[0],
                    "level": path.count(",") - 1,
                    "path": path,
                    "bound_at": now,
                    "bind_source": "import",
                    "expires_at": None,
                },
            )
        for i in range(n):
            if team[i]:
                add(
                    team_counts.for_id(node_ids[i]),
                    {
                        "user_id": node_ids[i],
                        "level1_count": level1[i],
                        "level2_count": level2[i],
                        "level3_count": level3[i],
                        "team_size": team[i],
                    },
                )
        for name, promoter_id in (
            ("depth1", self.tree_root),
            ("depth3", self.third_level),
            ("depth1000", self.chain_tip),
        ):
            code = f"BENCH{secrets.token_hex(2).upper()}"[:8].replace("0", "2").replace("1", "3")
            self.codes[name] = code
            add(
                promoters.for_id(promoter_id),
                {
                    "user_id": promoter_id,
                    "code": code,
                    "status": "approved",
                    "tier": None,
                    "status_version": 0,
                    "applied_at": now,
                    "approved_at": now,
                    "updated_at": now,
                },
            )
            add(global_index, {"kind": "promoter_code", "value": code, "entity_id": promoter_id})
        await _insert(db, per_table)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc): unlike wall-clock rates,
    CPU per request does not change when other programs load the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _timed(
    count: int, concurrency: int, call: Callable[[int], Awaitable[None]]
) -> tuple[float, list[float]]:
    samples: list[float] = []
    queue = iter(range(count))

    async def worker() -> None:
        for index in queue:
            started = time.perf_counter()
            await call(index)
            samples.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, samples


def _cte_sql(user_id: int) -> str:
    """The seed's way: one unsharded relation table, parent_id walked by a recursive CTE."""
    return (
        "WITH RECURSIVE up(user_id, parent_id, depth) AS ("
        f"SELECT user_id, parent_id, 0 FROM seed_relation WHERE user_id = {user_id} "
        "UNION ALL SELECT r.user_id, r.parent_id, up.depth + 1 FROM up "
        "JOIN seed_relation r ON r.user_id = up.parent_id"
        ") SELECT parent_id, depth FROM up ORDER BY depth"
    )


async def _seed_table(db: Database) -> None:
    """The seed's single relation table (user_id primary key, parent_id), copied from ours."""
    async with db.primary.begin() as conn:
        await conn.execute(
            text("CREATE TABLE seed_relation (user_id BIGINT PRIMARY KEY, parent_id BIGINT)")
        )
        for shard in range(SHARD_COUNT):
            await conn.execute(
                text(
                    "INSERT INTO seed_relation (user_id, parent_id) "
                    f"SELECT user_id, parent_id FROM user_relation_{shard}"
                )
            )


async def _run(database_url: str, workdir: Path) -> None:
    size = _env("BENCH_USER_TREE_SIZE", 200_000)
    depth = _env("BENCH_USER_CHAIN_DEPTH", 1000)
    binds = _env("BENCH_USER_BINDS", 2000)
    reads = _env("BENCH_USER_READS", 500)
    db = Database(database_url)
    await migrate(db, MIGRATIONS)
    seed = Seed(size, depth, len(DEPTHS) * (len(CONCURRENCIES) * (binds + ROUNDS) + WARM_UP_BINDS))
    started = time.perf_counter()
    await seed.load(db)
    print(
        f"seeded {size:,} users (random tree) + a {depth}-deep chain + "
        f"{len(seed.fresh_users):,} unbound users in {time.perf_counter() - started:.1f}s "
        f"on {db.dialect}",
        flush=True,
    )

    # The seed's baseline and our path read, in-process on the same database.
    await _seed_table(db)
    deep = seed.chain_tip
    cte, ours = [], []
    async with db.read(may_lag=False) as conn:
        for _ in range(max(reads // 5, 20)):
            t = time.perf_counter()
            found = (await conn.execute(text(_cte_sql(deep)))).all()
            cte.append(time.perf_counter() - t)
    assert len(found) == depth - 1, len(found)  # one row per ancestor
    for _ in range(reads):
        t = time.perf_counter()
        _, path = await read_path(db, deep)
        ours.append(time.perf_counter() - t)
    assert len(paths.ids_of(path)) == depth
    await db.dispose()

    port, broker_port = free_port(), free_port()
    broker = subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
        [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{broker_port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{broker_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    admin_key = secrets.token_hex(8)
    env = {
        **os.environ,
        "TUIKE_DATABASE_URL": database_url,
        "TUIKE_PORT": str(port),
        "TUIKE_NODE_ID": "2",
        "TUIKE_RUN_WORKERS": os.environ.get("BENCH_USER_WORKERS", "false"),
        "TUIKE_BOOTSTRAP_ADMIN_KEY": admin_key,
        "TUIKE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{broker_port}",
        "TUIKE_LOG_LEVEL": "WARNING",
    }
    service = subprocess.Popen(  # noqa: ASYNC220 - started once, before timing
        [sys.executable, "-m", "services.user"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=None if os.environ.get("BENCH_USER_VERBOSE") else subprocess.DEVNULL,
    )
    try:
        wait_port("127.0.0.1", broker_port, 20, broker)
        wait_port("127.0.0.1", port, 60, service)
        headers = {"Authorization": f"Bearer {admin_key}"}
        async with BenchClient(f"http://127.0.0.1:{port}", headers) as client:
            await _measure(client, seed, binds, reads, service.pid)
    finally:
        service.terminate()
        service.wait(10)
        broker.terminate()
        broker.wait(10)
    print(_line("ancestors depth 1000, path read (in-process)", ours))
    print(_line("ancestors depth 1000, recursive CTE (seed)", cte))
    print(f"recursive CTE / path read at p50: {_pct(cte, 50) / _pct(ours, 50):.1f}x")


async def _settled(pid: int, limit_seconds: float = 600.0) -> float:
    """Wait until the service is idle (under a fifth of a core for a second); returns how
    long that took. A process with workers starts with background passes over the whole
    seeded tree (the personal-data pass of the users it finds unsealed), which a steady-state
    figure must not include."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_seconds:
        before = _cpu_seconds(pid)
        await asyncio.sleep(1.0)
        if _cpu_seconds(pid) - before < 0.2:
            break
    return time.perf_counter() - started


async def _measure(client: BenchClient, seed: Seed, binds: int, reads: int, pid: int) -> None:
    # Warm up the process (imports, pools) with reads.
    for _ in range(20):
        status, _ = await client.get(f"/api/v1/relations/{seed.tree_root}/team")
        assert status == 200
    if os.environ.get("BENCH_USER_WORKERS", "false") == "true":
        print(f"the service's start-up work took {await _settled(pid):.1f}s", flush=True)
    fresh = iter(seed.fresh_users)
    deep_child = 0  # a user bound under the chain tip: depth 1001

    def binder(name: str, count: int) -> Callable[[int], Awaitable[None]]:
        nonlocal deep_child
        users, code = [next(fresh) for _ in range(count)], seed.codes[name]
        if name == "depth1000" and not deep_child:
            deep_child = users[0]  # bound by the warm-up

        async def bind(index: int) -> None:
            body = {"user_id": str(users[index]), "promoter_code": code, "source": "link"}
            status, answer = await client.post("/api/v1/relations/bind", body)
            assert status == 200, answer

        return bind

    for name in DEPTHS:
        await _timed(WARM_UP_BINDS, CONCURRENCIES[0], binder(name, WARM_UP_BINDS))
    ratios: dict[str, list[str]] = {"depth1": [], "depth3": []}
    for concurrency in CONCURRENCIES:
        # The depths take turns, ROUNDS times: this machine's speed drifts by tens of percent
        # from one minute to the next, and the ratios must not measure that.
        runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in DEPTHS}
        samples: dict[str, list[float]] = {name: [] for name in DEPTHS}
        per_round = max(binds // ROUNDS, 1)
        for _ in range(ROUNDS):
            for name in DEPTHS:
                bind = binder(name, per_round)
                service_before, client_before = _cpu_seconds(pid), time.process_time()
                elapsed, latencies = await _timed(per_round, concurrency, bind)
                runs[name].append(
                    (
                        per_round / elapsed,
                        (_cpu_seconds(pid) - service_before) / per_round * 1000,
                        (time.process_time() - client_before) / per_round * 1000,
                    )
                )
                samples[name] += latencies
        for name in DEPTHS:
            rate, service_cpu, client_cpu = (
                statistics.median(r[i] for r in runs[name]) for i in range(3)
            )
            print(
                f"bind at {name:<9} x{concurrency:<3} {rate:7.0f} binds/s  "
                + _line("", samples[name]).strip()
                + f"  CPU per bind: service {service_cpu:.3f} ms, client {client_cpu:.3f} ms",
                flush=True,
            )
        for base, found in ratios.items():
            turns = [
                deep[0] / shallow[0]
                for shallow, deep in zip(runs[base], runs["depth1000"], strict=True)
            ]
            found.append(f"x{concurrency}: {statistics.median(turns):.2f}")
    for base, found in ratios.items():
        print(
            f"bind throughput depth 1000 / {base.replace('depth', 'depth ')} "
            "(median of the turns): " + ", ".join(found)
        )

    async def ancestors(_: int) -> None:
        status, answer = await client.get(f"/api/v1/relations/{deep_child}/ancestors", levels=1000)
        assert status == 200 and len(answer["items"]) == 1000

    async def children(_: int) -> None:
        status, _ = await client.get(f"/api/v1/relations/{seed.busy_parent}/children", limit=50)
        assert status == 200

    async def team(_: int) -> None:
        status, answer = await client.get(f"/api/v1/relations/{seed.tree_root}/team")
        assert status == 200 and answer["team_size"] >= seed.size - 1

    for label, call in (
        ("GET ancestors?levels=1000 at depth 1001 (HTTP)", ancestors),
        ("GET children page of 50, busiest parent (HTTP)", children),
        ("GET team of the tree's root (HTTP)", team),
    ):
        cpu_before = _cpu_seconds(pid)
        _, latencies = await _timed(reads, 1, call)
        cpu = (_cpu_seconds(pid) - cpu_before) / reads * 1000
        print(_line(label, latencies) + f"  service CPU {cpu:.3f} ms/request")


async def _mysql_database(server_url: str) -> tuple[str, str]:
    name = f"tuike_bench_{secrets.token_hex(3)}"
    engine = create_async_engine(server_url.rstrip("/") + "/")
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    await engine.dispose()
    return name, f"{server_url.rstrip('/')}/{name}?charset=utf8mb4"


async def _drop(server_url: str, name: str) -> None:
    engine = create_async_engine(server_url.rstrip("/") + "/")
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    await engine.dispose()


def main() -> None:
    mysql_url = os.environ.get("BENCH_USER_MYSQL_URL")
    with tempfile.TemporaryDirectory(prefix="tuike-bench-user-") as workdir:
        if mysql_url:
            name, url = asyncio.run(_mysql_database(mysql_url))
            try:
                asyncio.run(_run(url, Path(workdir)))
            finally:
                asyncio.run(_drop(mysql_url, name))
        else:
            asyncio.run(_run(f"sqlite+aiosqlite:///{workdir}/user.db", Path(workdir)))


if __name__ == "__main__":
    main()
