"""Settings of the order service: deploy-time (environment) and business (REST, database)."""

from __future__ import annotations

from pydantic import Field

from libs.common.business_settings import SettingsModel
from libs.common.settings import ServiceSettings


class OrderServiceSettings(ServiceSettings):
    """``TUIKE_*`` variables of the order service process."""

    # Shared secrets of the platform webhooks (unset = that webhook refuses every call).
    shopify_webhook_secret: str | None = None
    woocommerce_webhook_secret: str | None = None
    # Platform names under which webhook orders and their buyers are stored.
    shopify_platform: str = "shopify"
    woocommerce_platform: str = "woocommerce"
    # Calls to the user service: how long to wait before taking the order as `pending`.
    user_service_timeout_seconds: float = 3.0
    # How often the background tasks look for pending attributions and due completions.
    attribution_retry_seconds: float = 1.0
    attribution_max_backoff_seconds: float = 60.0
    auto_complete_interval_seconds: float = 60.0


class OrderSettings(SettingsModel):
    """``GET/PUT /api/v1/settings/order``."""

    # A paid order the platform never completes is completed this many days after payment.
    auto_complete_days: int = Field(default=15, ge=0, le=365)
    # How many levels of beneficiaries the attribution snapshot keeps (level 1 = the parent).
    attribution_levels: int = Field(default=3, ge=1, le=10)
