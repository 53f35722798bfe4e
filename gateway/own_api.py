"""The gateway's own routes: promoter tokens for platforms, platform API keys, the gateway's
audit log. Callers are admitted (authenticated, authorized, rate-limited) before these
handlers run; they find the caller on ``request.state``."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import jwt
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from gateway.keys import ApiKey, KeyStore
from gateway.settings import GatewaySettings
from gateway.upstream import UpstreamClient, UpstreamError
from libs.common import audit
from libs.common.auth import PROMOTER, Caller, internal_headers
from libs.common.db.engine import Database
from libs.common.errors import NotFound, ServiceUnavailable, Unauthorized
from libs.common.schemas import Id


class TokenRequest(BaseModel):
    user_id: Id
    ttl_seconds: int | None = Field(default=None, ge=60, le=86_400)


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int
    expires_at: datetime
    user_id: Id
    platform: str


class ApiKeyCreate(BaseModel):
    platform: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    name: str = Field(default="", max_length=200)


class ApiKeyView(BaseModel):
    key_id: str
    platform: str
    name: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    status: str


class ApiKeyCreated(ApiKeyView):
    api_key: str = Field(description="The full key. It is shown only in this response.")


class ApiKeyList(BaseModel):
    items: list[ApiKeyView]


def _view(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "platform": key.platform,
        "name": key.name,
        "created_by": key.created_by,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
        "status": "revoked" if key.revoked_at else "active",
    }


def caller_of(request: Request) -> Caller:
    caller: Caller | None = getattr(request.state, "caller", None)
    if caller is None:  # every own route is admitted first; this is a second lock
        raise Unauthorized("missing credentials")
    return caller


def own_router(
    settings: GatewaySettings,
    keys: KeyStore,
    db: Database,
    client: Any,
) -> APIRouter:
    """``client()`` returns the gateway's pooled upstream client (gateway/upstream.py)."""
    router = APIRouter(prefix="/api/v1")

    @router.post("/auth/tokens", status_code=201, response_model=TokenResponse, tags=["auth"])
    async def mint_promoter_token(request: Request, payload: TokenRequest) -> dict[str, Any]:
        """A platform (with its API key) logs one of its users in to a frontend app: a
        short-lived promoter token for that user. The user must belong to the platform."""
        caller = caller_of(request)
        caller.require("platform")
        user = await _fetch_user(settings, client(), payload.user_id)
        if user is None or (not caller.is_admin and user.get("platform") != caller.platform):
            # Another platform's user is as unknown to this caller as a missing one.
            raise NotFound(f"no user {payload.user_id}", code="user.not_found")
        ttl = min(
            payload.ttl_seconds or settings.promoter_token_ttl_seconds,
            settings.promoter_token_ttl_seconds,
        )
        platform = str(user.get("platform") or caller.platform or "default")
        token, expires_at = _sign(settings, payload.user_id, platform, ttl)
        return {
            "access_token": token,
            "expires_in": ttl,
            "expires_at": datetime.fromtimestamp(expires_at, UTC),
            "user_id": payload.user_id,
            "platform": platform,
        }

    @router.post("/api-keys", status_code=201, response_model=ApiKeyCreated, tags=["auth"])
    async def create_api_key(request: Request, payload: ApiKeyCreate) -> dict[str, Any]:
        """Admins create a platform's API key; the full key is shown once, stored hashed."""
        caller = caller_of(request)
        caller.require()
        key, full = await keys.create(caller, payload.platform, payload.name)
        return {**_view(key), "api_key": full}

    @router.get("/api-keys", response_model=ApiKeyList, tags=["auth"])
    async def list_api_keys(
        request: Request, platform: str | None = Query(default=None, max_length=64)
    ) -> dict[str, Any]:
        caller_of(request).require()
        return {"items": [_view(k) for k in await keys.list(platform)]}

    @router.delete("/api-keys/{key_id}", response_model=ApiKeyView, tags=["auth"])
    async def revoke_api_key(request: Request, key_id: str) -> dict[str, Any]:
        """Revoke a key (it stops working on every gateway within seconds); idempotent."""
        caller = caller_of(request)
        caller.require()
        return _view(await keys.revoke(caller, key_id[:32]))

    @router.get("/audit/gateway", response_model=audit.AuditPage, tags=["audit"])
    async def read_gateway_audit_log(
        request: Request,
        actor: str | None = Query(default=None, max_length=191),
        action: str | None = Query(default=None, max_length=100),
        cursor: int | None = Query(default=None, ge=0),
        limit: int = Query(default=50, ge=1, le=500),
    ) -> audit.AuditPage:
        caller_of(request).require()
        async with db.read(may_lag=False) as conn:
            return await audit.list_entries(
                conn, actor=actor, action=action, cursor=cursor, limit=limit
            )

    return router


async def _fetch_user(
    settings: GatewaySettings, client: UpstreamClient, user_id: int
) -> dict[str, Any] | None:
    url = f"{settings.user_service_url.rstrip('/')}/api/v1/users/{user_id}"
    try:
        status, body = await client.get_json(
            url, headers=internal_headers(settings), timeout_seconds=5.0
        )
    except (UpstreamError, ValueError) as exc:
        raise ServiceUnavailable(
            "the user service is unavailable",
            code="upstream.unavailable",
            details={"service": "user"},
        ) from exc
    if status == 404:
        return None
    if status != 200:
        raise ServiceUnavailable(
            "the user service could not confirm the user",
            code="upstream.unavailable",
            details={"service": "user", "status": status},
        )
    return body if isinstance(body, dict) else None


def _sign(settings: GatewaySettings, user_id: int, platform: str, ttl: int) -> tuple[str, int]:
    now = int(time.time())
    claims = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": str(user_id),
        "roles": [PROMOTER],
        "scopes": [],
        "platform": platform,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
    }
    if settings.jwt_private_key:
        key = settings.jwt_private_key
        if not key.lstrip().startswith("-----BEGIN"):
            with open(key) as handle:
                key = handle.read()
        headers = {"kid": settings.jwt_key_id} if settings.jwt_key_id else None
        return jwt.encode(claims, key, algorithm="RS256", headers=headers), now + ttl
    if settings.jwt_secret:
        return jwt.encode(claims, settings.jwt_secret, algorithm="HS256"), now + ttl
    raise ServiceUnavailable("no token signing key is configured", code="auth.tokens_unavailable")
