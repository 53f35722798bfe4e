"""Who is calling, checked at the gateway and again in every service (defence in depth).

A request carries ``Authorization: Bearer <token>``; the token is one of:

- a JWT (HS256 with ``TUIKE_JWT_SECRET``, or RS256 with ``TUIKE_JWT_PUBLIC_KEY`` / a JWKS
  file ``TUIKE_JWT_JWKS_FILE``): ``sub`` = user id, ``roles`` ⊂ {promoter, finance, admin,
  platform}, ``scopes`` (a list, or an OAuth space-separated ``scope``), optional
  ``platform``; ``exp``, ``nbf``, ``iss`` and ``aud`` are checked;
- a gateway assertion: a short-lived HS256 JWT the gateway signs with the internal key for
  callers it authenticated itself (platform API keys), so services need no key database;
- the internal service key (Tuike services calling each other directly);
- the dev stack's bootstrap admin key.

Handlers never look at tokens: they ask the :class:`Caller` what it may do.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jwt
from fastapi import Request

from libs.common.errors import Forbidden, Unauthorized
from libs.common.settings import CommonSettings

ADMIN, FINANCE, PROMOTER, PLATFORM, SERVICE = "admin", "finance", "promoter", "platform", "service"
# Roles a token may carry; SERVICE comes only from the internal key, never from a token.
TOKEN_ROLES = frozenset({ADMIN, FINANCE, PROMOTER, PLATFORM})
PII_READ = "pii:read"

GATEWAY_ISSUER = "tuike-gateway"
GATEWAY_AUDIENCE = "tuike-services"
GATEWAY_ASSERTION_SECONDS = 60
# The key id in a gateway assertion's header, so other tokens never try the internal key.
GATEWAY_KEY_ID = "tuike-gateway"
# Verified tokens are remembered (until they expire) so a client's next call costs a lookup.
_VERIFIED_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Caller:
    subject: str
    roles: frozenset[str]
    user_id: int | None = None
    platform: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.roles or SERVICE in self.roles

    def require(self, *roles: str) -> None:
        """Admins (and internal services) may do everything; others need one of ``roles``."""
        if self.is_admin or self.roles.intersection(roles):
            return
        raise Forbidden(
            "this caller may not do that", details={"needs_one_of": sorted({ADMIN, *roles})}
        )

    def require_self_or(self, user_id: int, *roles: str) -> None:
        """The promoter itself, or an admin / one of ``roles``."""
        if self.user_id is not None and self.user_id == user_id and PROMOTER in self.roles:
            return
        self.require(*roles)

    def may_read_pii(self) -> bool:
        return self.is_admin or PII_READ in self.scopes


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


def _as_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return []


def caller_from_claims(claims: dict[str, Any]) -> Caller:
    """A :class:`Caller` from verified claims; unknown roles are dropped, never trusted."""
    subject = str(claims.get("sub") or "")
    if not subject:
        raise Unauthorized("the token has no subject", code="auth.invalid_token")
    roles = frozenset(_as_strings(claims.get("roles"))) & TOKEN_ROLES
    scopes = frozenset(_as_strings(claims.get("scopes")) + _as_strings(claims.get("scope")))
    platform = claims.get("platform")
    return Caller(
        subject=subject,
        roles=roles,
        user_id=int(subject) if subject.isdigit() else None,
        platform=str(platform) if platform else None,
        scopes=scopes,
    )


class JwtVerifier:
    """Verifies JWTs against the configured keys: HS256 with the secret, RS256 with the
    public key or the JWKS key named by the token's ``kid``. The algorithm decides the key,
    so a token can never make us use an RSA public key as an HMAC secret."""

    def __init__(
        self,
        *,
        secret: str | None,
        public_key: str | None,
        jwks_file: str | None,
        issuer: str,
        audience: str,
        leeway_seconds: int,
    ) -> None:
        self.secret = secret
        self.public_key = _load_pem(public_key) if public_key else None
        self.jwks = jwt.PyJWKSet.from_json(Path(jwks_file).read_text()) if jwks_file else None
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway_seconds
        self._verified: dict[str, tuple[Caller, float]] = {}

    @property
    def configured(self) -> bool:
        return bool(self.secret or self.public_key or self.jwks)

    def _key(self, header: dict[str, Any]) -> Any:
        algorithm = header.get("alg")
        if algorithm == "HS256" and self.secret:
            return self.secret
        if algorithm == "RS256":
            kid = header.get("kid")
            if self.jwks is not None:
                keys = [k for k in self.jwks.keys if kid is None or k.key_id == kid]
                if len(keys) == 1 or (keys and kid is not None):
                    return keys[0].key
            if self.public_key is not None:
                return self.public_key
        raise Unauthorized("the token's signing key is unknown", code="auth.invalid_token")

    def caller(self, token: str) -> Caller:
        """The caller of a valid token (verified once, then remembered until it expires)."""
        cached = self._verified.get(token)
        if cached is not None:
            if time.time() <= cached[1]:
                return cached[0]
            del self._verified[token]
        claims = self.verify(token)
        caller = caller_from_claims(claims)
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (caller, float(claims["exp"]))
        return caller

    def verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key(header),
                algorithms=[str(header.get("alg"))],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the token has expired", code="auth.token_expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized("the token is not valid yet", code="auth.invalid_token") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}", code="auth.invalid_token") from exc
        return claims


def _load_pem(value: str) -> Any:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    text = value if value.lstrip().startswith("-----BEGIN") else Path(value).read_text()
    return load_pem_public_key(text.encode())


@lru_cache(maxsize=8)
def _verifier(
    secret: str | None,
    public_key: str | None,
    jwks_file: str | None,
    issuer: str,
    audience: str,
    leeway: int,
) -> JwtVerifier:
    return JwtVerifier(
        secret=secret,
        public_key=public_key,
        jwks_file=jwks_file,
        issuer=issuer,
        audience=audience,
        leeway_seconds=leeway,
    )


def jwt_verifier(settings: CommonSettings) -> JwtVerifier:
    """The verifier of these settings (keys are loaded once per process)."""
    return _verifier(
        settings.jwt_secret,
        settings.jwt_public_key,
        settings.jwt_jwks_file,
        settings.jwt_issuer,
        settings.jwt_audience,
        settings.jwt_leeway_seconds,
    )


def _verify_gateway_assertion(token: str, settings: CommonSettings) -> Caller | None:
    """A gateway assertion signed with the internal key, or None if the token is not one."""
    if not settings.internal_api_key:
        return None
    try:
        claims = jwt.decode(
            token,
            settings.internal_api_key,
            algorithms=["HS256"],
            audience=GATEWAY_AUDIENCE,
            issuer=GATEWAY_ISSUER,
            leeway=5,
            options={"require": ["exp", "sub", "iss", "aud"]},
        )
    except jwt.PyJWTError:
        return None
    return caller_from_claims(claims)


def authenticate_token(token: str, settings: CommonSettings) -> Caller:
    """The caller a bearer token stands for (401 ``auth.*`` when it stands for nobody)."""
    if settings.internal_api_key and hmac.compare_digest(token, settings.internal_api_key):
        return Caller(subject="service", roles=frozenset({SERVICE}))
    if settings.bootstrap_admin_key and hmac.compare_digest(token, settings.bootstrap_admin_key):
        return Caller(subject="bootstrap-admin", roles=frozenset({ADMIN}))
    if looks_like_jwt(token):
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized("invalid token", code="auth.invalid_token") from exc
        if header.get("kid") == GATEWAY_KEY_ID:
            assertion = _verify_gateway_assertion(token, settings)
            if assertion is not None:
                return assertion
            raise Unauthorized("invalid gateway assertion", code="auth.invalid_token")
        verifier = jwt_verifier(settings)
        if verifier.configured:
            return verifier.caller(token)
    raise Unauthorized("invalid credentials")


def authenticate(request: Request, settings: CommonSettings) -> Caller:
    token = _bearer(request)
    if token is None:
        raise Unauthorized("missing credentials")
    return authenticate_token(token, settings)


def internal_headers(settings: CommonSettings) -> dict[str, str]:
    """Headers for a call to another Tuike service."""
    return {"Authorization": f"Bearer {settings.internal_api_key}"}


def gateway_assertion(caller: Caller, internal_key: str) -> str:
    """A short-lived token that carries a caller the gateway authenticated to a service."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": GATEWAY_ISSUER,
        "aud": GATEWAY_AUDIENCE,
        "sub": caller.subject,
        "roles": sorted(caller.roles & TOKEN_ROLES),
        "scopes": sorted(caller.scopes),
        "iat": now,
        "exp": now + GATEWAY_ASSERTION_SECONDS,
    }
    if caller.platform:
        claims["platform"] = caller.platform
    return jwt.encode(claims, internal_key, algorithm="HS256", headers={"kid": GATEWAY_KEY_ID})


def make_token(
    settings: CommonSettings,
    subject: str | int,
    roles: list[str] | tuple[str, ...],
    *,
    scopes: list[str] | tuple[str, ...] = (),
    platform: str | None = None,
    ttl_seconds: int = 900,
    secret: str | None = None,
) -> str:
    """An HS256 JWT for these settings (``TUIKE_JWT_SECRET``): what the gateway's token
    endpoint issues, and what tests use to act as a promoter, finance or platform."""
    key = secret or settings.jwt_secret
    if not key:
        raise ValueError("no JWT secret configured")
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": str(subject),
        "roles": list(roles),
        "scopes": list(scopes),
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
    }
    if platform:
        claims["platform"] = platform
    return jwt.encode(claims, key, algorithm="HS256")
