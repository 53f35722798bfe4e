"""Admission of one request at the gateway, in the order ARCHITECTURE §9 asks: the route
exists (404), the caller is who it says (401), may call this route (403), is within its
rate (429), and the body is not too large (413). Only then is the request proxied.
"""

from __future__ import annotations

import base64
import time
from collections import OrderedDict
from dataclasses import dataclass

import orjson
from fastapi import Request
from redis.asyncio import Redis

from gateway.keys import KEY_PREFIX, ApiKey, KeyStore
from gateway.permissions import ADMIN_ONLY, Rule, match, refusal
from gateway.ratelimit import Limit, RateLimiter
from gateway.settings import GatewaySettings
from gateway.signatures import is_signed, verify_signed
from libs.common.auth import PLATFORM, SERVICE, Caller, authenticate_token, looks_like_jwt
from libs.common.errors import Forbidden, TuikeError, Unauthorized


class TooLarge(TuikeError):
    code = "request.too_large"
    status = 413


class RateLimited(TuikeError):
    code = "rate_limited"
    status = 429

    def __init__(self, retry_after: int, limit: Limit) -> None:
        super().__init__(
            "too many requests; retry later",
            details={
                "retry_after_seconds": retry_after,
                "limit_per_second": limit.per_second,
                "burst": limit.burst,
            },
        )
        self.retry_after = retry_after


class GatewayForbidden(Forbidden):
    """A refusal by the gateway's route-permission table (tagged so tests can tell it from a
    service's own refusal)."""


@dataclass
class Admitted:
    caller: Caller | None  # None: an anonymous caller of a public route
    api_key: ApiKey | None
    rule: Rule
    body: bytes


class CallerCache:
    """Callers of bearer tokens already verified here (JWTs and the bootstrap admin key),
    remembered for at most ``seconds`` and never past the token's ``exp``: a client's next
    call costs a dictionary lookup instead of a signature check. A bounded LRU, so a flood
    of distinct tokens cannot grow it. API keys are not kept here: their lookup is cached
    by the key store, which also forgets a key the moment it is revoked."""

    def __init__(self, seconds: float = 5.0, max_size: int = 10_000) -> None:
        self.seconds = seconds
        self.max_size = max_size
        self._entries: OrderedDict[str, tuple[float, Caller]] = OrderedDict()

    def get(self, token: str) -> Caller | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if entry[0] < time.time():
            del self._entries[token]
            return None
        self._entries.move_to_end(token)
        return entry[1]

    def put(self, token: str, caller: Caller) -> None:
        until = time.time() + self.seconds
        if looks_like_jwt(token):
            expires = _unverified_exp(token)
            if expires is None:
                return
            until = min(until, expires)
        self._entries[token] = (until, caller)
        self._entries.move_to_end(token)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)


def _unverified_exp(token: str) -> float | None:
    """``exp`` of a JWT whose signature was just verified (so its payload can be read)."""
    try:
        payload = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    too_large = TooLarge("request body too large", details={"limit_bytes": limit})
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    body = b"".join(chunks)
    # Later readers (FastAPI endpoints of the gateway itself) find the body here.
    request._body = body
    return body


class Gatekeeper:
    def __init__(
        self, settings: GatewaySettings, keys: KeyStore, redis: Redis, limiter: RateLimiter
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.redis = redis
        self.limiter = limiter
        self.callers = CallerCache()

    def limit_for(self, caller: Caller | None) -> Limit | None:
        """The bucket of this caller; None = not limited (admins, by default)."""
        s = self.settings
        if not s.rate_limit_enabled:
            return None
        if caller is None:
            return Limit(s.anonymous_rate_limit_per_second, s.anonymous_rate_limit_burst)
        if caller.is_admin and s.rate_limit_admin_exempt:
            return None
        if PLATFORM in caller.roles:
            return Limit(s.platform_rate_limit_per_second, s.platform_rate_limit_burst)
        return Limit(s.rate_limit_per_second, s.rate_limit_burst)

    async def _authenticate(
        self, request: Request, token: str | None
    ) -> tuple[Caller, ApiKey | None]:
        if token is None:
            raise Unauthorized("missing credentials")
        if token.startswith(KEY_PREFIX):
            if self.settings.api_key_require_signature:
                raise Unauthorized(
                    "API keys must sign their requests", code="auth.signature_required"
                )
            key = await self.keys.verify_bearer(token)
            if key is None:
                raise Unauthorized("unknown or revoked API key", code="auth.invalid_key")
            return key.caller(), key
        caller = self.callers.get(token)
        if caller is None:
            caller = authenticate_token(token, self.settings)
            if SERVICE in caller.roles:
                # The internal key is for services calling each other, never from outside.
                raise Unauthorized("invalid credentials")
            self.callers.put(token, caller)
        return caller, None

    async def admit(self, request: Request) -> Admitted:
        path: str = request.scope["path"]
        rule, params = match(request.method, path)
        headers = dict(request.headers.items())  # ASGI header names are lower case
        token = _bearer(request)
        signed = is_signed(headers)
        caller: Caller | None = None
        api_key: ApiKey | None = None
        if not rule.public:
            if token is None and not signed:
                raise Unauthorized("missing credentials")
            if not signed:
                caller, api_key = await self._authenticate(request, token)
        body = await read_body(request, self.settings.max_body_bytes)
        if signed and not rule.public:
            query = request.scope.get("query_string", b"").decode("latin-1")
            target = path + (f"?{query}" if query else "")
            api_key = await verify_signed(
                keys=self.keys,
                redis=self.redis,
                redis_prefix=self.settings.redis_key_prefix,
                window_seconds=self.settings.signature_window_seconds,
                method=request.method,
                target=target,
                headers=headers,
                body=body,
                timeout_seconds=self.settings.redis_timeout_seconds,
            )
            caller = api_key.caller()
        if caller is not None:
            reason = refusal(caller, rule, params, dict(request.query_params), body)
            if reason is not None:
                allowed = sorted(rule.roles | {"admin"}) if rule is not ADMIN_ONLY else ["admin"]
                raise GatewayForbidden(reason, details={"allowed_roles": allowed})
        limit = self.limit_for(caller)
        if limit is not None:
            identity = caller.subject if caller is not None else f"ip:{_client_ip(request)}"
            # Route templates keep the key space bounded (never the raw path).
            route = rule.name if rule is not ADMIN_ONLY else f"{request.method} unlisted"
            decision = await self.limiter.take(identity, route, limit)
            if not decision.allowed:
                raise RateLimited(decision.retry_after_seconds, limit)
        return Admitted(caller, api_key, rule, body)


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"
