"""Deploy-time settings of the gateway (env prefix ``TUIKE_``)."""

from __future__ import annotations

from libs.common.settings import CommonSettings


class GatewaySettings(CommonSettings):
    service_name: str = "gateway"
    port: int = 8000
    upstream_connect_timeout_seconds: float = 2.0
    upstream_timeout_seconds: float = 15.0
    upstream_max_connections: int = 200
    max_body_bytes: int = 1_048_576

    def upstreams(self) -> dict[str, str]:
        return {
            "user": self.user_service_url.rstrip("/"),
            "order": self.order_service_url.rstrip("/"),
            "commission": self.commission_service_url.rstrip("/"),
            "stats": self.stats_service_url.rstrip("/"),
        }
