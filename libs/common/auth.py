"""Who is calling, checked again in every service (defence in depth behind the gateway).

A request carries ``Authorization: Bearer <token>``. Today a token is one of: the internal
service key (other Tuike services), or the dev stack's bootstrap admin key. JWTs for
promoters, finance and platforms plug in here (issue 8) without touching handlers, which
only ask the :class:`Caller` what it may do.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from fastapi import Request

from libs.common.errors import Forbidden, Unauthorized
from libs.common.settings import CommonSettings

ADMIN, FINANCE, PROMOTER, PLATFORM, SERVICE = "admin", "finance", "promoter", "platform", "service"


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
        return self.is_admin or "pii:read" in self.scopes


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(request: Request, settings: CommonSettings) -> Caller:
    token = _bearer(request)
    if token is None:
        raise Unauthorized("missing credentials")
    if settings.internal_api_key and hmac.compare_digest(token, settings.internal_api_key):
        return Caller(subject="service", roles=frozenset({SERVICE}))
    if settings.bootstrap_admin_key and hmac.compare_digest(token, settings.bootstrap_admin_key):
        return Caller(subject="bootstrap-admin", roles=frozenset({ADMIN}))
    raise Unauthorized("invalid credentials")


def internal_headers(settings: CommonSettings) -> dict[str, str]:
    """Headers for a call to another Tuike service."""
    return {"Authorization": f"Bearer {settings.internal_api_key}"}
