"""One chaos run: start the real stack (separate processes: broker, Redis, each service's API
and worker, the gateway) with TCP proxies in front of Redis and MariaDB, drive traffic through
the gateway while faults hit it, then wait for quiet and reconcile.

The run is reproducible in its choices (seeded RNG; the seed is printed), not in its timing:
processes and the broker run at their own pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from chaos.client import Api, Counts
from chaos.faults import Injector
from chaos.proxy import TcpProxy
from chaos.reconcile import Reconciler
from chaos.redeliver import Redeliverer
from chaos.traffic import Traffic
from deploy.local.stack import SERVICES, Stack, StackConfig, free_port
from tests.withdrawals.fake_wechat import FakeServer, FakeWechatPay

log = logging.getLogger("tuike.chaos")

MCHID = "1900000109"
SERIAL_NO = "5157F09EFDC"


@dataclass
class ChaosConfig:
    seconds: float = 120.0
    seed: int | None = None
    mysql_url: str | None = None  # a server URL (mysql+asyncmy://user@host:port); None = SQLite
    redis_url: str | None = None  # None = an embedded redis-server
    var_dir: Path | None = None  # None = a new directory under var/, removed afterwards
    traffic_workers: int = 3
    fault_interval: tuple[float, float] = (2.0, 5.0)
    # How long a cut of the database or Redis lasts (seconds, drawn uniformly).
    cut_seconds: tuple[float, float] = (2.0, 5.0)
    quiet_timeout: float = 120.0
    separate_workers: bool = True
    # Only these fault kinds (None = every kind the backend allows): to chase one finding.
    kinds: tuple[str, ...] | None = None


@dataclass
class ChaosResult:
    seed: int
    backend: str
    faults: Counter[str]
    unexpected_exits: Counter[str]
    operations: Counter[str]
    requests: Counts
    events: dict[str, dict[str, int]]
    redelivered: int
    checked: dict[str, Any]
    differences: list[str] = field(default_factory=list)
    quiet_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.differences

    def summary_line(self) -> str:
        return f"reconciliation: {len(self.differences)} differences"


def _pem_private(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _pem_public(key: rsa.RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


class Harness:
    def __init__(self, config: ChaosConfig, say: Callable[[str], None] = print) -> None:
        self.config = config
        self.say = say
        self.seed = config.seed if config.seed is not None else secrets.randbelow(2**31)
        self.rng = random.Random(self.seed)
        tag = secrets.token_hex(3)
        self.tag = tag
        self.own_var_dir = config.var_dir is None
        self.var_dir = config.var_dir or Path("var") / f"chaos-{tag}"
        self.db_proxy: TcpProxy | None = None
        self.redis_proxy: TcpProxy | None = None
        self.merchant_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.fake = FakeWechatPay(self.merchant_key.public_key(), mchid=MCHID, serial_no=SERIAL_NO)

    # -- the stack -------------------------------------------------------------------------
    def _stack_config(self, fake_url: str) -> StackConfig:
        mysql_url = None
        if self.config.mysql_url and self.db_proxy is not None:
            mysql_url = (
                make_url(self.config.mysql_url)
                .set(host="127.0.0.1", port=self.db_proxy.port)
                .render_as_string(hide_password=False)
            )
        wechat = {
            "TUIKE_WECHAT_PAY_BASE_URL": fake_url,
            "TUIKE_WECHAT_PAY_MCHID": MCHID,
            "TUIKE_WECHAT_PAY_APPID": "wxchaos0000000000",
            "TUIKE_WECHAT_PAY_SERIAL_NO": SERIAL_NO,
            "TUIKE_WECHAT_PAY_PRIVATE_KEY": _pem_private(self.merchant_key),
            "TUIKE_WECHAT_PAY_PLATFORM_PUBLIC_KEY": _pem_public(
                self.fake.platform_key.public_key()
            ),
            "TUIKE_WECHAT_PAY_PLATFORM_PUBLIC_KEY_ID": "PUB_KEY_ID_0000000001",
        }
        service_env: dict[str, dict[str, str]] = {s: {} for s in SERVICES}
        if self.config.separate_workers:
            for env in service_env.values():
                env["TUIKE_RUN_WORKERS"] = "false"
        service_env["commission"].update(wechat)
        return StackConfig(
            var_dir=self.var_dir,
            gateway_port=free_port(),
            service_ports={name: free_port() for name in SERVICES},
            broker_port=free_port(),
            embedded_redis_port=free_port(),
            mysql_url=mysql_url,
            database_prefix=f"tuike_chaos{self.tag}",
            redis_url=None,  # set below: through the proxy
            redis_key_prefix=f"tuike-chaos-{self.tag}:",
            admin_key=f"chaos-admin-{self.tag}",
            extra_env={
                # Workers apart from the API wake on a poll, not the commit: keep it short.
                "TUIKE_OUTBOX_POLL_SECONDS": "0.02",
                "TUIKE_LOG_LEVEL": os.environ.get("TUIKE_CHAOS_LOG_LEVEL", "WARNING"),
            },
            service_env=service_env,
        )

    async def _proxies(self, stack: Stack) -> None:
        """Redis (given or embedded) and MariaDB behind proxies the faults can cut."""
        if self.config.redis_url:
            url = urlsplit(self.config.redis_url)
            target = (url.hostname or "127.0.0.1", url.port or 6379)
            database = url.path.strip("/") or "0"
        else:
            await asyncio.to_thread(stack.start_redis)
            target = ("127.0.0.1", stack.config.embedded_redis_port)
            database = "0"
        self.redis_proxy = TcpProxy(*target, free_port())
        await self.redis_proxy.start()
        stack.config.redis_url = f"redis://127.0.0.1:{self.redis_proxy.port}/{database}"
        stack.redis_url = stack.config.redis_url

    def _start_processes(self, stack: Stack) -> None:
        stack.start_broker()
        stack.migrate()
        for service in SERVICES:
            stack.start_service(service)
        stack.start_gateway()
        stack.wait_ready(180)
        # Workers after the APIs are up: an API and a worker of the commission service that
        # start at the same moment race to create the monthly ledger triggers on MariaDB and
        # one of them dies ("Trigger ... already exists"; reported, services/commission).
        if self.config.separate_workers:
            for service in SERVICES:
                stack.start_worker(service)
            time.sleep(1.0)
            stack.wait_ready(60)

    def _direct_db_url(self, stack: Stack) -> Callable[[str], str]:
        def url(service: str) -> str:
            if self.config.mysql_url:
                return (
                    f"{self.config.mysql_url.rstrip('/')}/"
                    f"{stack.config.database_prefix}_{service}?charset=utf8mb4"
                )
            return stack.config.database_url(service)

        return url

    # -- the run ---------------------------------------------------------------------------
    async def run(self) -> ChaosResult:
        backend = "mariadb" if self.config.mysql_url else "sqlite"
        self.say(
            f"chaos: seed {self.seed}, {self.config.seconds:.0f}s of faults, backend {backend}, "
            f"var {self.var_dir}"
        )
        if self.config.mysql_url:
            server = make_url(self.config.mysql_url)
            self.db_proxy = TcpProxy(server.host or "127.0.0.1", server.port or 3306, free_port())
            await self.db_proxy.start()
        counts = Counts()
        with FakeServer(self.fake.app()) as fake_server:
            stack = Stack(self._stack_config(fake_server.url))
            api = Api(stack.gateway_url, stack.config.admin_key, random.Random(self.seed), counts)
            try:
                started = time.monotonic()
                await self._proxies(stack)
                await asyncio.to_thread(self._start_processes, stack)
                self.say(f"stack up in {time.monotonic() - started:.1f}s")
                return await self._drive(stack, api, counts, backend)
            finally:
                await api.aclose()
                await asyncio.to_thread(stack.stop)
                if self.config.mysql_url and not os.environ.get("TUIKE_CHAOS_KEEP"):
                    stack.config.mysql_url = self.config.mysql_url
                    with contextlib.suppress(Exception):
                        await stack.drop_databases()
                if self.config.redis_url and not os.environ.get("TUIKE_CHAOS_KEEP"):
                    with contextlib.suppress(Exception):
                        await self._drop_redis_keys(stack.config.redis_key_prefix)
                for proxy in (self.db_proxy, self.redis_proxy):
                    if proxy is not None:
                        await proxy.stop()
                if self.own_var_dir and not os.environ.get("TUIKE_CHAOS_KEEP"):
                    shutil.rmtree(self.var_dir, ignore_errors=True)

    async def _drop_redis_keys(self, prefix: str) -> None:
        """A shared Redis keeps nothing of the run (leaderboards, caches, leases)."""
        assert self.config.redis_url is not None
        client = Redis.from_url(self.config.redis_url)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
            for start in range(0, len(keys), 500):
                await client.delete(*keys[start : start + 500])
        finally:
            await client.aclose()

    async def _drive(self, stack: Stack, api: Api, counts: Counts, backend: str) -> ChaosResult:
        traffic = Traffic(api, random.Random(self.rng.random()), fake_wechat=self.fake)
        await traffic.setup()
        injector = Injector(
            stack,
            random.Random(self.rng.random()),
            db_proxy=self.db_proxy,
            redis_proxy=self.redis_proxy,
            write_for=traffic.write_for,
            say=self.say,
            only=self.config.kinds,
            cut_seconds=self.config.cut_seconds,
        )
        redeliverer = Redeliverer(
            stack.kafka, random.Random(self.rng.random()), f"chaos-redeliver-{self.tag}"
        )
        stop_traffic, stop_faults, stop_support = asyncio.Event(), asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.create_task(traffic.run(stop_traffic, self.config.traffic_workers)),
            asyncio.create_task(injector.run(stop_faults, self.config.fault_interval)),
        ]
        support = [
            asyncio.create_task(injector.supervise(stop_support)),
            asyncio.create_task(redeliverer.run(stop_support)),
        ]
        await asyncio.sleep(self.config.seconds)
        stop_faults.set()
        stop_traffic.set()
        await asyncio.gather(*tasks)
        self.say(f"faults and traffic stopped; {traffic.ops['orders_paid']} orders paid")

        reconciler = Reconciler(
            api, traffic, self._direct_db_url(stack), stack.service_env, self.fake
        )
        quiet_started = time.monotonic()
        differences = await self._quiet(traffic, reconciler, api, stop_support)
        quiet = time.monotonic() - quiet_started
        stop_support.set()
        await asyncio.gather(*support, return_exceptions=True)
        events = await reconciler.counts()
        return ChaosResult(
            seed=self.seed,
            backend=backend,
            faults=injector.counts,
            unexpected_exits=injector.unexpected_exits,
            operations=traffic.ops,
            requests=counts,
            events=events,
            redelivered=redeliverer.redelivered,
            checked=reconciler.facts,
            differences=differences,
            quiet_seconds=quiet,
        )

    async def _quiet(
        self, traffic: Traffic, reconciler: Reconciler, api: Api, stop_support: asyncio.Event
    ) -> list[str]:
        """Finish the business (payouts whose outcome is unknown, settlement), wait until the
        outboxes are drained, then reconcile until clean or the quiet timeout: the system is
        eventually consistent, so a difference must persist to count."""
        deadline = time.monotonic() + self.config.quiet_timeout
        attempt = 0
        while True:
            attempt += 1
            await traffic.finish_payouts()
            await api.call("POST", "/api/v1/settlements/run")
            while time.monotonic() < deadline:
                backlog = await reconciler.backlog()
                if not any(backlog.values()):
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(2.0)
            differences = await reconciler.run()
            self.say(f"reconciliation pass {attempt}: {len(differences)} differences")
            if not differences or time.monotonic() > deadline:
                return differences
            await asyncio.sleep(3.0)


def report(result: ChaosResult, say: Callable[[str], None] = print) -> None:
    """The summary; its last line is ``reconciliation: N differences``."""

    def kinds(counter: Counter[str]) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(counter.items())) or "none"

    say(f"seed: {result.seed} (backend {result.backend})")
    say(f"faults injected: {kinds(result.faults)} (total {sum(result.faults.values())})")
    say(f"processes that exited on their own: {kinds(result.unexpected_exits)}")
    say(f"traffic: {kinds(result.operations)}")
    r = result.requests
    say(
        f"requests: {r.requests} sent, {r.succeeded} succeeded, "
        f"{sum(r.failures.values())} failed and retried, {r.gave_up} given up"
    )
    say(f"  failures by kind: {kinds(r.failures)}")
    say(f"  refused (4xx) by code: {kinds(r.refused)}")
    say(f"  answers with status 500: {len(r.server_errors)}")
    for line in r.server_errors[:10]:
        say(f"    {line}")
    for service, figures in result.events.items():
        say(
            f"events {service}: {figures['published']} published, {figures['applied']} applied, "
            f"{figures['dead_letters']} dead letters"
        )
    say(f"events redelivered by the chaos consumer: {result.redelivered}")
    say(f"checked: {kinds(Counter(result.checked))}; quiet period {result.quiet_seconds:.1f}s")
    for difference in result.differences[:100]:
        say(f"difference: {difference}")
    say(result.summary_line())
