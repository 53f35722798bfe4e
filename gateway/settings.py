"""Deploy-time settings of the gateway (env prefix ``TUIKE_``)."""

from __future__ import annotations

from pydantic import Field

from libs.common.settings import CommonSettings


class GatewaySettings(CommonSettings):
    service_name: str = "gateway"
    port: int = 8000
    upstream_connect_timeout_seconds: float = 2.0
    upstream_timeout_seconds: float = 15.0
    upstream_max_connections: int = 200
    max_body_bytes: int = 1_048_576

    # The gateway's own small database: platform API keys and its audit log.
    gateway_database_url: str = "sqlite+aiosqlite:///var/gateway.db"

    # Promoter tokens minted at POST /api/v1/auth/tokens: HS256 with TUIKE_JWT_SECRET, or
    # RS256 with this PEM private key (inline or a file path) and key id.
    jwt_private_key: str | None = None
    jwt_key_id: str | None = None
    promoter_token_ttl_seconds: int = Field(default=900, ge=60, le=86_400)

    # Signed platform requests: how far a timestamp may be from now; nonces live twice that.
    signature_window_seconds: int = 300
    # Require the HMAC signature from API keys (off: the key may also be sent as a bearer).
    api_key_require_signature: bool = False
    # Revoked keys stop working within this many seconds on every gateway replica.
    api_key_cache_seconds: float = 5.0

    # Token buckets per caller and route (docs/security.md): refill per second and burst.
    rate_limit_enabled: bool = True
    rate_limit_per_second: float = 20.0
    rate_limit_burst: int = 40
    platform_rate_limit_per_second: float = 200.0
    platform_rate_limit_burst: int = 400
    anonymous_rate_limit_per_second: float = 10.0
    anonymous_rate_limit_burst: int = 20
    rate_limit_admin_exempt: bool = True

    # Bound of each Redis call (rate limit, nonce): past it a rate limit passes (fail open)
    # and a signed request is refused (replay protection fails closed).
    redis_timeout_seconds: float = 2.0

    # Circuit breaker per upstream: open after this many failures in a row, for this long.
    breaker_failure_threshold: int = 5
    breaker_open_seconds: float = 5.0

    # How long the merged OpenAPI document is reused before the services are asked again.
    openapi_cache_seconds: float = 30.0

    def upstreams(self) -> dict[str, str]:
        return {
            "user": self.user_service_url.rstrip("/"),
            "order": self.order_service_url.rstrip("/"),
            "commission": self.commission_service_url.rstrip("/"),
            "stats": self.stats_service_url.rstrip("/"),
        }
