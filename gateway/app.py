"""The API gateway: the one door for every public route.

Each ``/api`` request is admitted first (gateway/admission.py: route exists, caller
authenticated, authorized by the route-permission table, within its rate, body not too
large), then proxied to its service over pooled aiohttp connections (gateway/upstream.py)
with timeouts, the request id and a circuit breaker per upstream; a service that is down
is a 503 in the error envelope, never a hang. Responses are masked for callers without
``pii:read``; admin and finance writes are written to the gateway's audit log.
``/openapi.json`` and ``/docs`` show one document merged from the services.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from redis.asyncio import Redis
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.admission import Admitted, Gatekeeper, GatewayForbidden, RateLimited
from gateway.breaker import CircuitBreaker
from gateway.keys import GATEWAY_MIGRATIONS, AssertionCache, KeyStore
from gateway.masking import mask_json_body, mask_value
from gateway.openapi import fetch_service_docs, merge
from gateway.own_api import own_router
from gateway.ratelimit import RateLimiter
from gateway.routes import resolve
from gateway.settings import GatewaySettings
from gateway.upstream import (
    UpstreamClient,
    UpstreamError,
    UpstreamNeverReached,
    UpstreamResponse,
    UpstreamTimeout,
)
from libs.common import audit
from libs.common.db.engine import Database, Tx
from libs.common.db.migrations import migrate
from libs.common.errors import TuikeError, error_response, install_error_handlers
from libs.common.logs import REQUEST_ID_HEADER, configure_logging, request_id_var
from libs.common.metrics import DEPENDENCY_UP, install_metrics
from libs.common.requests import install_request_id

log = logging.getLogger("tuike.gateway")

# Set on refusals by the gateway's own permission table (a service's 403 lacks it).
REFUSED_BY_HEADER = "X-Tuike-Refused-By"
OWN_PREFIXES = ("/api/v1/auth/tokens", "/api/v1/api-keys", "/api/v1/audit/gateway")
_READS = {"GET", "HEAD", "OPTIONS"}

# Hop-by-hop headers (RFC 9110 §7.6.1), those the client recomputes, and our signature
# headers.
_DROP_REQUEST = {
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "te",
    "trailer",
    "content-length",
    "x-tuike-key-id",
    "x-tuike-timestamp",
    "x-tuike-nonce",
    "x-tuike-signature",
}
# Uvicorn writes its own server/date; content-length is the (maybe masked) body's; aiohttp
# hands over decompressed bodies, so the content-encoding no longer applies.
_DROP_RESPONSE_BYTES = {
    b"connection",
    b"keep-alive",
    b"transfer-encoding",
    b"content-encoding",
    b"content-length",
    b"server",
    b"date",
}


class FrontDoor:
    """The gateway's pure ASGI front door, ahead of FastAPI's router.

    - Proxied routes (``/api/...``, ``/s/...``) go straight to the proxy: it takes no
      parameters to parse or inject and answers every refusal itself, so FastAPI's router,
      exception and dependency layers would only add CPU per request. ``scope["route"]`` is
      set so metrics label them by their template; an unexpected error still reaches the
      envelope handler of the outermost error middleware.
    - The gateway's own routes are admitted before FastAPI parses their bodies, so an
      anonymous caller gets 401 (not 422) there too.
    - Anything else (health, metrics, docs, unknown paths, methods the proxy does not take)
      goes to FastAPI.
    """

    def __init__(
        self,
        app: ASGIApp,
        admit: Callable[[Request], Awaitable[Admitted | Response]],
        proxy: Callable[[Request], Awaitable[Response]],
        proxy_routes: tuple[Route, ...],
    ) -> None:
        self.app = app
        self.admit = admit
        self.proxy = proxy
        self.proxy_routes = proxy_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(OWN_PREFIXES):
            await self._own_route(scope, receive, send)
            return
        for route in self.proxy_routes:
            matched, child_scope = route.matches(scope)
            if matched is Match.FULL:
                scope.update(child_scope)
                scope["route"] = route
                response = await self.proxy(Request(scope, receive))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _own_route(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        admitted = await self.admit(request)
        if isinstance(admitted, Response):
            await admitted(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = admitted.caller
        body_sent = False

        async def replay() -> Message:
            nonlocal body_sent
            if body_sent:
                return await receive()
            body_sent = True
            return {"type": "http.request", "body": admitted.body, "more_body": False}

        await self.app(scope, replay, send)


def _redis_client(url: str) -> Redis:
    """The gateway's Redis client, without a per-socket-operation timeout: redis-py wraps
    every send in ``asyncio.wait_for`` then, a task per command and a quarter of the CPU of
    a rate-limit check. Each use is bounded by ``asyncio.timeout`` instead (a timer, no
    task); redis-py drops a connection whose command was cancelled, so none is reused
    mid-answer."""
    return Redis.from_url(
        url, socket_timeout=None, socket_connect_timeout=2.0, health_check_interval=30
    )


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    configure_logging("gateway", settings.log_level)
    upstreams = settings.upstreams()
    state: dict[str, Any] = {}
    db = Database(settings.gateway_database_url)
    keys = KeyStore(db, settings.api_key_cache_seconds)
    redis = _redis_client(settings.redis_url)
    limiter = RateLimiter(redis, settings.redis_key_prefix, settings.redis_timeout_seconds)
    gatekeeper = Gatekeeper(settings, keys, redis, limiter)
    assertions = AssertionCache(settings.internal_api_key or "")
    breakers = {
        name: CircuitBreaker(
            name, settings.breaker_failure_threshold, settings.breaker_open_seconds
        )
        for name in upstreams
    }

    upstream_client = UpstreamClient(
        connect_timeout=settings.upstream_connect_timeout_seconds,
        timeout=settings.upstream_timeout_seconds,
        max_connections=settings.upstream_max_connections,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await migrate(db, GATEWAY_MIGRATIONS)
        await upstream_client.start()
        # The ~130k objects of the loaded modules and the app live as long as the process:
        # moved out of the collector's sight, a full collection under load takes well under
        # a millisecond instead of ~70 ms that every request in flight would wait for (p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()  # an app stopped inside a longer-lived process (tests) is garbage
            await upstream_client.close()
            await redis.aclose()
            await db.dispose()

    app = FastAPI(
        title="Tuike API",
        version="1",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)

    def client() -> UpstreamClient:
        return upstream_client

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": "gateway"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {}

        async def check_redis() -> None:
            try:
                await asyncio.wait_for(redis.ping(), timeout=2.0)
                checks["redis"] = "ok"
            except Exception as exc:
                checks["redis"] = f"down: {type(exc).__name__}"

        async def check_service(name: str, base: str) -> None:
            try:
                status, body = await client().get_json(f"{base}/readyz", timeout_seconds=3.0)
                if status == 200:
                    checks[name] = "ok"
                else:
                    checks[name] = f"not ready: {body.get('checks')}"
            except Exception as exc:
                checks[name] = f"down: {type(exc).__name__}"

        await asyncio.gather(check_redis(), *(check_service(n, b) for n, b in upstreams.items()))
        for name, value in checks.items():
            DEPENDENCY_UP.labels("gateway", name).set(1 if value == "ok" else 0)
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "service": "gateway", "checks": checks},
            status_code=200 if ready else 503,
        )

    # -- one API document ---------------------------------------------------------------
    async def merged_document() -> dict[str, Any]:
        cached = state.get("openapi")
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        own = get_openapi(title="Tuike gateway", version="1", routes=app.routes)
        docs = await fetch_service_docs(client(), upstreams)
        document = merge(own, docs)
        # A partial document (a service down) is kept only briefly.
        ttl = settings.openapi_cache_seconds if len(docs) == len(upstreams) else 2.0
        state["openapi"] = (time.monotonic() + ttl, document)
        return document

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_document() -> JSONResponse:
        return JSONResponse(await merged_document())

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Tuike API")

    # -- admission, audit ---------------------------------------------------------------
    async def write_audit(admitted: Admitted, request: Request, status: int) -> None:
        caller = admitted.caller
        assert caller is not None
        try:
            parsed = orjson.loads(admitted.body) if admitted.body else None
        except orjson.JSONDecodeError:
            parsed = {"raw_bytes": len(admitted.body)}
        action = admitted.rule.name if admitted.rule.template.startswith("/") else request.method

        async def work(tx: Tx) -> None:
            await audit.record(
                await tx.main(),
                caller,
                action,
                resolve(request.url.path) or "gateway",
                request.url.path,
                after={"request": mask_value(parsed)},
                status=status,
            )

        try:
            await db.run(work)
        except Exception:  # the change is done; a lost audit row is logged, not a 500
            log.exception("could not write the audit row of %s %s", request.method, request.url)

    async def admit(request: Request) -> Admitted | Response:
        """The admitted request, or the refusal to send (401/403/413/429)."""
        try:
            return await gatekeeper.admit(request)
        except RateLimited as exc:
            return error_response(
                exc.status,
                exc.code,
                exc.message,
                exc.details,
                headers={"Retry-After": str(exc.retry_after)},
            )
        except GatewayForbidden as exc:
            return error_response(
                exc.status,
                exc.code,
                exc.message,
                exc.details,
                headers={REFUSED_BY_HEADER: "gateway"},
            )
        except TuikeError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.details)

    # -- proxy ----------------------------------------------------------------------------
    async def proxy(request: Request) -> Response:
        full_path: str = request.scope["path"]
        service = resolve(full_path)
        if service is None:
            return error_response(404, "not_found", f"no route {full_path}")
        admitted = await admit(request)
        if isinstance(admitted, Response):
            return admitted
        response = await forward(request, service, admitted)
        caller = admitted.caller
        if caller is not None and request.method not in _READS and audit.is_audited(caller):
            await write_audit(admitted, request, response.status_code)
        return response

    async def send_upstream(
        method: str, url: str, body: bytes, headers: dict[str, str]
    ) -> UpstreamResponse:
        """One more try when the connection could not even be opened (the request surely
        never reached the service). A pooled connection found closed is retried by aiohttp
        for reads only (and PUT/DELETE, idempotent by definition); POST and PATCH are never
        sent twice."""
        try:
            return await client().request(method, url, body=body, headers=headers)
        except UpstreamNeverReached:
            return await client().request(method, url, body=body, headers=headers)

    async def forward(request: Request, service: str, admitted: Admitted) -> Response:
        scope = request.scope
        headers = {k: v for k, v in request.headers.items() if k not in _DROP_REQUEST}
        headers[REQUEST_ID_HEADER] = request_id_var.get() or ""
        caller = admitted.caller
        if admitted.api_key is not None and caller is not None:
            # Services hold no key database: they get the caller as a signed assertion.
            headers.pop("authorization", None)
            if settings.internal_api_key:
                headers["authorization"] = f"Bearer {assertions.get(caller)}"
        breaker = breakers[service]
        if not breaker.allow():
            return error_response(
                503,
                "upstream.unavailable",
                f"the {service} service is unavailable",
                {"service": service, "reason": "circuit_open"},
                headers={"Retry-After": str(breaker.retry_after_seconds())},
            )
        # The raw path and query, still percent-encoded: a decoded %2F would route
        # differently, and the service parses the query exactly as the gateway did.
        raw_path = scope.get("raw_path") or scope["path"].encode()
        url = f"{upstreams[service]}{raw_path.decode('latin-1')}"
        if scope.get("query_string"):
            url += f"?{scope['query_string'].decode('latin-1')}"
        try:
            upstream = await send_upstream(request.method, url, admitted.body, headers)
        except UpstreamTimeout:
            breaker.record_failure()
            return error_response(
                504, "upstream.timeout", f"the {service} service timed out", {"service": service}
            )
        except UpstreamError as exc:
            breaker.record_failure()
            log.warning("upstream %s unavailable: %s", service, exc)
            return error_response(
                503,
                "upstream.unavailable",
                f"the {service} service is unavailable",
                {"service": service},
            )
        breaker.record_success()
        content = upstream.body
        if (caller is None or not caller.may_read_pii()) and "json" in upstream.content_type:
            content = mask_json_body(content)
        response = Response(content=content, status_code=upstream.status)
        # Response() set content-length from the (maybe masked) body; add the service's
        # headers but the hop-by-hop ones and those describing the original body.
        response.raw_headers.extend(
            (name, value)
            for name, value in upstream.headers
            if name.lower() not in _DROP_RESPONSE_BYTES
        )
        return response

    app.include_router(own_router(settings, keys, db, client))
    # Registered so FastAPI answers methods they do not take (405) and metrics know their
    # templates; requests they take are dispatched by the front door.
    proxy_routes = (
        Route("/api/{rest:path}", proxy, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        Route("/s/{rest:path}", proxy, methods=["GET"]),
    )
    app.router.routes.extend(proxy_routes)
    app.add_middleware(FrontDoor, admit=admit, proxy=proxy, proxy_routes=proxy_routes)
    # Order matters: metrics sees the final status, request ids wrap everything.
    install_metrics(app, "gateway")
    install_request_id(app)
    return app
