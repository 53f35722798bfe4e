"""The API gateway: the one door for every public route.

Each ``/api`` request is admitted first (gateway/admission.py: route exists, caller
authenticated, authorized by the route-permission table, within its rate, body not too
large), then proxied to its service over pooled httpx connections with timeouts, the request
id and a circuit breaker per upstream; a service that is down is a 503 in the error
envelope, never a hang. Responses are masked for callers without ``pii:read``; admin and
finance writes are written to the gateway's audit log. ``/openapi.json`` and ``/docs`` show
one document merged from the services.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.admission import Admitted, Gatekeeper, GatewayForbidden, RateLimited
from gateway.breaker import CircuitBreaker
from gateway.keys import GATEWAY_MIGRATIONS, KeyStore
from gateway.masking import mask_json_body, mask_value
from gateway.openapi import fetch_service_docs, merge
from gateway.own_api import own_router
from gateway.ratelimit import RateLimiter
from gateway.routes import resolve
from gateway.settings import GatewaySettings
from libs.common import audit
from libs.common.auth import gateway_assertion
from libs.common.db.engine import Database, Tx
from libs.common.db.migrations import migrate
from libs.common.errors import TuikeError, error_response, install_error_handlers
from libs.common.logs import REQUEST_ID_HEADER, configure_logging, request_id_var
from libs.common.metrics import DEPENDENCY_UP, install_metrics
from libs.common.redis import connect
from libs.common.requests import install_request_id

log = logging.getLogger("tuike.gateway")

# Set on refusals by the gateway's own permission table (a service's 403 lacks it).
REFUSED_BY_HEADER = "X-Tuike-Refused-By"
OWN_PREFIXES = ("/api/v1/auth/tokens", "/api/v1/api-keys", "/api/v1/audit/gateway")
_READS = {"GET", "HEAD", "OPTIONS"}

# Hop-by-hop headers (RFC 9110 §7.6.1), those httpx recomputes, and our signature headers.
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
_DROP_RESPONSE = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-encoding",
    "content-length",
    "server",
    "date",
}


class OwnRouteAdmission:
    """Admits requests to the gateway's own routes before FastAPI parses their bodies, so an
    anonymous caller gets 401 (not 422) there too. A pure ASGI middleware: proxied routes
    are admitted inside the proxy handler and pay nothing here."""

    def __init__(
        self, app: ASGIApp, admit: Callable[[Request], Awaitable[Admitted | Response]]
    ) -> None:
        self.app = app
        self.admit = admit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(OWN_PREFIXES):
            await self.app(scope, receive, send)
            return
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


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    configure_logging("gateway", settings.log_level)
    upstreams = settings.upstreams()
    state: dict[str, Any] = {}
    db = Database(settings.gateway_database_url)
    keys = KeyStore(db, settings.api_key_cache_seconds)
    redis: Redis = connect(settings.redis_url)
    gatekeeper = Gatekeeper(settings, keys, redis, RateLimiter(redis, settings.redis_key_prefix))
    breakers = {
        name: CircuitBreaker(
            name, settings.breaker_failure_threshold, settings.breaker_open_seconds
        )
        for name in upstreams
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await migrate(db, GATEWAY_MIGRATIONS)
        state["client"] = httpx.AsyncClient(
            timeout=httpx.Timeout(
                settings.upstream_timeout_seconds, connect=settings.upstream_connect_timeout_seconds
            ),
            limits=httpx.Limits(
                max_connections=settings.upstream_max_connections,
                max_keepalive_connections=settings.upstream_max_connections,
                # Below uvicorn's 5 s keep-alive: never reuse a connection the service is
                # closing at that very moment (a spurious 503 under load).
                keepalive_expiry=2.0,
            ),
        )
        try:
            yield
        finally:
            await state["client"].aclose()
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

    def client() -> httpx.AsyncClient:
        return state["client"]

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
                response = await client().get(f"{base}/readyz", timeout=3.0)
                body = response.json()
                if response.status_code == 200:
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
        full_path = request.url.path
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
        method: str, url: str, request: Request, body: bytes, headers: dict[str, str]
    ) -> httpx.Response:
        """One retry when the request surely never reached the service (connect failed) or
        when a read lost its pooled connection; writes are never sent twice."""
        for attempt in (1, 2):
            try:
                return await client().request(
                    method, url, params=request.query_params, content=body, headers=headers
                )
            except (httpx.ConnectError, httpx.RemoteProtocolError) as exc:
                retry = isinstance(exc, httpx.ConnectError) or method in _READS
                if attempt == 2 or not retry:
                    raise
        raise AssertionError("unreachable")

    async def forward(request: Request, service: str, admitted: Admitted) -> Response:
        full_path = request.url.path
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        headers[REQUEST_ID_HEADER] = request_id_var.get() or ""
        caller = admitted.caller
        if admitted.api_key is not None and caller is not None:
            # Services hold no key database: they get the caller as a signed assertion.
            headers.pop("authorization", None)
            headers.pop("Authorization", None)
            if settings.internal_api_key:
                headers["Authorization"] = (
                    f"Bearer {gateway_assertion(caller, settings.internal_api_key)}"
                )
        breaker = breakers[service]
        if not breaker.allow():
            return error_response(
                503,
                "upstream.unavailable",
                f"the {service} service is unavailable",
                {"service": service, "reason": "circuit_open"},
                headers={"Retry-After": str(breaker.retry_after_seconds())},
            )
        # The raw path, still percent-encoded: a decoded %2F would route differently.
        raw_path = request.scope.get("raw_path") or full_path.encode()
        url = f"{upstreams[service]}{raw_path.decode('latin-1')}"
        try:
            upstream = await send_upstream(request.method, url, request, admitted.body, headers)
        except httpx.TimeoutException:
            breaker.record_failure()
            return error_response(
                504, "upstream.timeout", f"the {service} service timed out", {"service": service}
            )
        except httpx.TransportError as exc:
            breaker.record_failure()
            log.warning("upstream %s unavailable: %s", service, exc)
            return error_response(
                503,
                "upstream.unavailable",
                f"the {service} service is unavailable",
                {"service": service},
            )
        breaker.record_success()
        response_headers = {
            k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE
        }
        content = upstream.content
        if (caller is None or not caller.may_read_pii()) and "json" in upstream.headers.get(
            "content-type", ""
        ):
            content = mask_json_body(content)
        return Response(content=content, status_code=upstream.status_code, headers=response_headers)

    app.include_router(own_router(settings, keys, db, client))
    app.add_middleware(OwnRouteAdmission, admit=admit)
    app.add_api_route(
        "/api/{rest:path}",
        proxy,
        include_in_schema=False,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    )
    app.add_api_route("/s/{rest:path}", proxy, methods=["GET"], include_in_schema=False)
    # Order matters: metrics sees the final status, request ids wrap everything.
    install_metrics(app, "gateway")
    install_request_id(app)
    return app
