"""The shape every service process shares: engines, Redis, producer, ids, outbox relay,
consumers and background tasks, started and stopped by the FastAPI lifespan; plus the
``/healthz``, ``/readyz`` and ``/metrics`` endpoints and the command line
(``python -m services.<name> [serve|migrate|worker]``)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from starlette.routing import Route

from libs.common.audit import audit_metadata, audit_router
from libs.common.auth import Caller, authenticate
from libs.common.business_settings import ChangeCheck, SettingsModel, SettingsStore, settings_router
from libs.common.db.engine import Database
from libs.common.db.migrations import Migration, MigrationContext, migrate
from libs.common.errors import install_error_handlers
from libs.common.ids import IdGenerator, NodeLease
from libs.common.lean_routes import LeanApp
from libs.common.logs import configure_logging
from libs.common.messaging.consumer import EventConsumer, Subscription, replay_dead_letters
from libs.common.messaging.envelope import ALL_TOPICS
from libs.common.messaging.kafka import ensure_topics, make_producer, start_with_retry
from libs.common.messaging.outbox import OutboxRelay
from libs.common.metrics import DEPENDENCY_UP, install_metrics, measured
from libs.common.redis import Cache, connect
from libs.common.requests import install_request_id, with_request_id
from libs.common.settings import ServiceSettings

log = logging.getLogger("tuike.runtime")

Task = Callable[[asyncio.Event], Awaitable[None]]


@dataclass
class ServiceSpec:
    """What makes one service: its name, tables, routes, subscriptions and tasks."""

    name: str
    migrations: Sequence[Migration]
    routers: Sequence[APIRouter]
    subscriptions: Callable[[Runtime], Sequence[Subscription]] = lambda runtime: ()
    tasks: Callable[[Runtime], Sequence[Task]] = lambda runtime: ()
    on_start: Callable[[Runtime], Awaitable[None]] | None = None
    # The service's business settings (GET/PUT /api/v1/settings/{name}); None = no settings.
    settings_model: type[SettingsModel] | None = None
    settings_check: ChangeCheck | None = None
    # Deploy-time settings class: a ServiceSettings subclass may add the service's own fields.
    settings_class: type[ServiceSettings] = ServiceSettings
    # Hot endpoints served ahead of FastAPI's router (libs/common/lean_routes.py).
    lean_routes: Sequence[Route] = ()
    extra: dict[str, Any] = field(default_factory=dict)


class Runtime:
    """Everything a request handler or consumer of one service process needs."""

    def __init__(self, spec: ServiceSpec, settings: ServiceSettings) -> None:
        self.spec = spec
        self.settings = settings
        self.db = Database(
            settings.database_url, settings.replica_url, settings.shard_map, echo=settings.sql_echo
        )
        self.redis: Redis = connect(settings.redis_url)
        self.key_prefix = settings.redis_key_prefix
        self.cache = Cache(self.redis, f"{self.key_prefix}{spec.name}:")
        self.producer: AIOKafkaProducer = make_producer(settings)
        self.ids: IdGenerator | None = None
        self.node_lease: NodeLease | None = None
        self.relay: OutboxRelay | None = None
        self.business: SettingsStore[Any] = SettingsStore(
            spec.settings_model or SettingsModel, self.db
        )
        self.consumers: list[EventConsumer] = []
        self.stop_event = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def id_generator(self) -> IdGenerator:
        assert self.ids is not None, "runtime not started"
        return self.ids

    async def start(self, *, serve_workers: bool) -> None:
        if self.settings.node_id is not None:
            self.ids = IdGenerator(self.settings.node_id)
        else:
            self.node_lease = NodeLease(self.redis, self.key_prefix)
            self.ids = IdGenerator(await self.node_lease.acquire())
        await start_with_retry(self.producer)
        if self.spec.on_start is not None:
            await self.spec.on_start(self)
        if not serve_workers:
            return
        await ensure_topics(self.settings, ALL_TOPICS)
        self.relay = OutboxRelay(self.db, self.producer, self.settings, ALL_TOPICS)
        self._spawn(self.relay.run, "outbox-relay")
        for subscription in self.spec.subscriptions(self):
            consumer = EventConsumer(subscription, self.db, self.producer, self.settings)
            self.consumers.append(consumer)
            self._spawn(consumer.run, f"consumer:{subscription.name}")
        for task in self.spec.tasks(self):
            self._spawn(task, getattr(task, "__name__", "task"))

    def _spawn(self, task: Task, name: str) -> None:
        async def guarded() -> None:
            while not self.stop_event.is_set():
                try:
                    await task(self.stop_event)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("background task %s crashed; restarting", name)
                    await asyncio.sleep(1.0)

        self._tasks.append(asyncio.create_task(guarded(), name=name))

    async def stop(self) -> None:
        self.stop_event.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.producer.stop()
        if self.node_lease is not None:
            await self.node_lease.release()
        await self.redis.aclose()
        await self.db.dispose()

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}

        async def check(name: str, probe: Callable[[], Awaitable[Any]]) -> None:
            try:
                await asyncio.wait_for(probe(), timeout=2.0)
                checks[name] = "ok"
            except Exception as exc:
                checks[name] = f"down: {type(exc).__name__}: {exc}"[:200]
            DEPENDENCY_UP.labels(self.spec.name, name).set(1 if checks[name] == "ok" else 0)

        async def broker() -> None:
            await self.producer.client.fetch_all_metadata()

        async def consumers() -> None:
            joining = [c.name for c in self.consumers if not c.joined]
            if joining:
                raise RuntimeError(f"not yet in their groups: {', '.join(joining)}")

        probes = [
            check("database", self.db.ping),
            check("redis", self.redis.ping),
            check("broker", broker),
        ]
        if self.consumers:
            # A process that runs consumers is ready once each has first joined its group: a
            # new group reads nothing for its first seconds, and an order paid then would show
            # no commission yet. Later rebalances do not count (HTTP is served meanwhile).
            probes.append(check("consumers", consumers))
        await asyncio.gather(*probes)
        return checks


def runtime_of(request: Request) -> Runtime:
    """The runtime of the app serving ``request`` (for code that is not a dependency)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


# Dependencies are coroutines on purpose: FastAPI runs a plain ``def`` dependency in a thread
# pool, two thread hops per request for what is an attribute read and a signature check.
async def get_runtime(request: Request) -> Runtime:
    return runtime_of(request)


async def get_caller(request: Request) -> Caller:
    """The authenticated caller of this request (401 without valid credentials)."""
    return authenticate(request, request.app.state.runtime.settings)


async def get_business_settings(request: Request) -> SettingsStore[Any]:
    store: SettingsStore[Any] = request.app.state.runtime.business
    return store


def create_service_app(spec: ServiceSpec, settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or spec.settings_class(service_name=spec.name)
    if settings.service_name == "tuike":
        settings = settings.model_copy(update={"service_name": spec.name})
    configure_logging(spec.name, settings.log_level)
    runtime = Runtime(spec, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start(serve_workers=settings.run_workers)
        # What is alive after start (modules, app, pools) lives as long as the process: out of
        # the collector's sight, a full collection under load takes ~1 ms instead of ~70.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()  # an app stopped inside a longer-lived process (tests) is garbage
            await runtime.stop()

    app = LeanApp(title=f"Tuike {spec.name} service", lifespan=lifespan, version="1")
    app.state.runtime = runtime
    install_error_handlers(app)
    install_metrics(app, spec.name)
    install_request_id(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": spec.name}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks = await runtime.readiness()
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "service": spec.name, "checks": checks},
            status_code=200 if ready else 503,
        )

    for router in spec.routers:
        app.include_router(router)
    # A lean request passes the same request-id and metrics middlewares, nothing else.
    app.serve_lean(
        spec.lean_routes,
        lambda endpoint: with_request_id(measured(endpoint, spec.name, app.router)),
    )
    # Admins read this service's audit log (libs/common/audit.py) at /api/v1/audit/{name}.
    app.include_router(
        audit_router(spec.name, get_caller, lambda request: runtime_of(request).db.read())
    )
    if spec.settings_model is not None:
        app.include_router(
            settings_router(spec.name, get_business_settings, get_caller, spec.settings_check)
        )
    return app


async def _migrate(spec: ServiceSpec, settings: ServiceSettings) -> None:
    db = Database(settings.database_url, settings.replica_url, settings.shard_map)
    try:
        applied = await migrate(db, spec.migrations)
        # The audit log joined the common tables after some databases were created:
        # make sure it exists (idempotent) so an older var/ keeps working.
        await MigrationContext(db).create_tables(audit_metadata)
        log.info("migrated %s: applied %s", spec.name, applied or "nothing new")
    finally:
        await db.dispose()


async def _replay_dead_letters(spec: ServiceSpec, settings: ServiceSettings) -> int:
    runtime = Runtime(spec, settings)
    await start_with_retry(runtime.producer)
    try:
        consumers = [
            EventConsumer(subscription, runtime.db, runtime.producer, settings)
            for subscription in spec.subscriptions(runtime)
        ]
        report = await replay_dead_letters(runtime.db, consumers)
    finally:
        await runtime.stop()
    print(f"replayed {report.replayed} dead letters; {len(report.failed)} failed again")
    for letter_id, reason in report.failed.items():
        print(f"  dead letter {letter_id}: {reason}")
    return 1 if report.failed else 0


async def _worker(spec: ServiceSpec, settings: ServiceSettings) -> None:
    runtime = Runtime(spec, settings)
    await runtime.start(serve_workers=True)
    try:
        await runtime.stop_event.wait()
    finally:
        await runtime.stop()


def main(spec: ServiceSpec, app_factory: str) -> None:
    """``python -m services.<name> [serve|migrate|worker]``."""
    parser = argparse.ArgumentParser(prog=f"tuike-{spec.name}")
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=["serve", "migrate", "worker", "replay-dead-letters"],
    )
    args = parser.parse_args()
    settings = spec.settings_class(service_name=spec.name)
    configure_logging(spec.name, settings.log_level)
    if args.command == "migrate":
        asyncio.run(_migrate(spec, settings))
    elif args.command == "replay-dead-letters":
        raise SystemExit(asyncio.run(_replay_dead_letters(spec, settings)))
    elif args.command == "worker":
        asyncio.run(_worker(spec, settings))
    else:
        uvicorn.run(
            app_factory,
            factory=True,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=5,
        )
