"""The API gateway: one door for every public route, proxied to the services over pooled
httpx connections with timeouts and the request id; a service that is down is a 503 in the
error envelope, never a hang."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from redis.asyncio import Redis

from gateway.routes import is_public, resolve
from gateway.settings import GatewaySettings
from libs.common.errors import error_response, install_error_handlers
from libs.common.logs import REQUEST_ID_HEADER, configure_logging, request_id_var
from libs.common.metrics import DEPENDENCY_UP, install_metrics
from libs.common.redis import connect
from libs.common.requests import install_request_id

log = logging.getLogger("tuike.gateway")

# Hop-by-hop headers (RFC 9110 §7.6.1) and those httpx recomputes.
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


def _authenticated(request: Request, settings: GatewaySettings) -> bool:
    """The dev stack's bootstrap admin key (issue 8 adds JWTs and platform API keys)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token or not settings.bootstrap_admin_key:
        return False
    return hmac.compare_digest(token.strip(), settings.bootstrap_admin_key)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    configure_logging("gateway", settings.log_level)
    upstreams = settings.upstreams()
    state: dict[str, object] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["client"] = httpx.AsyncClient(
            timeout=httpx.Timeout(
                settings.upstream_timeout_seconds, connect=settings.upstream_connect_timeout_seconds
            ),
            limits=httpx.Limits(
                max_connections=settings.upstream_max_connections,
                max_keepalive_connections=settings.upstream_max_connections,
            ),
        )
        state["redis"] = connect(settings.redis_url)
        try:
            yield
        finally:
            await state["client"].aclose()  # type: ignore[attr-defined]
            await state["redis"].aclose()  # type: ignore[attr-defined]

    app = FastAPI(title="Tuike API", version="1", lifespan=lifespan)
    install_error_handlers(app)

    def client() -> httpx.AsyncClient:
        return state["client"]  # type: ignore[return-value]

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": "gateway"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        checks: dict[str, str] = {}

        async def check_redis() -> None:
            try:
                redis: Redis = state["redis"]  # type: ignore[assignment]
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

    async def proxy(request: Request, path: str) -> Response:
        full_path = "/" + path
        service = resolve(full_path)
        if service is None:
            return error_response(404, "not_found", f"no route {full_path}")
        if not is_public(full_path) and not _authenticated(request, settings):
            return error_response(401, "auth.unauthenticated", "missing or invalid credentials")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            return error_response(
                413,
                "request.too_large",
                "request body too large",
                {"limit_bytes": settings.max_body_bytes},
            )
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            return error_response(
                413,
                "request.too_large",
                "request body too large",
                {"limit_bytes": settings.max_body_bytes},
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        headers[REQUEST_ID_HEADER] = request_id_var.get() or ""
        url = f"{upstreams[service]}{full_path}"
        try:
            upstream = await client().request(
                request.method, url, params=request.query_params, content=body, headers=headers
            )
        except httpx.TimeoutException:
            return error_response(
                504, "upstream.timeout", f"the {service} service timed out", {"service": service}
            )
        except httpx.TransportError as exc:
            log.warning("upstream %s unavailable: %s", service, exc)
            return error_response(
                503,
                "upstream.unavailable",
                f"the {service} service is unavailable",
                {"service": service},
            )
        response_headers = {
            k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE
        }
        return Response(
            content=upstream.content, status_code=upstream.status_code, headers=response_headers
        )

    async def api_route(request: Request, rest: str) -> Response:
        return await proxy(request, f"api/{rest}")

    async def short_link_route(request: Request, rest: str) -> Response:
        return await proxy(request, f"s/{rest}")

    app.add_api_route(
        "/api/{rest:path}",
        api_route,
        include_in_schema=False,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    )
    app.add_api_route("/s/{rest:path}", short_link_route, methods=["GET"], include_in_schema=False)
    # Order matters: metrics sees the final status, request ids wrap everything.
    install_metrics(app, "gateway")
    install_request_id(app)
    return app
