"""The user service's business settings (``GET/PUT /api/v1/settings/user``) and its
deploy-time settings (:class:`UserDeploySettings`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from libs.common.business_settings import SettingsModel
from libs.common.settings import ServiceSettings

BindMode = Literal["first", "register_only", "override", "expiring"]
Qualification = Literal["everyone", "admin", "apply"]


class UserSettings(SettingsModel):
    # first: the first bind wins for good; register_only: only users registered within
    # register_window_minutes may be bound; override: the last share wins; expiring: a bind
    # lasts bind_ttl_days, then the user may be bound again.
    bind_mode: BindMode = "first"
    bind_ttl_days: int = Field(default=30, ge=1, le=3650)
    register_window_minutes: int = Field(default=1440, ge=1, le=525_600)
    # Who may become a promoter: everyone (approved at once), admin (only an admin grants),
    # apply (a user applies and an admin approves or rejects).
    promoter_qualification: Qualification = "apply"


class UserDeploySettings(ServiceSettings):
    """Deploy-time settings of the user service (environment, ``TUIKE_`` prefix)."""

    # Personal data at rest (libs/common/crypto.py, docs/security.md): base64 or hex of 32
    # bytes each. The encryption key seals phone, nickname and device id; the index key makes
    # the blind index of phones (never the same key: a leaked index key must not decrypt).
    # Unset = development keys derived from the bootstrap admin key, with a warning.
    pii_encryption_key: str | None = None
    # Comma-separated keys of earlier rotations: still read, never written.
    pii_encryption_old_keys: str = ""
    pii_index_key: str | None = None
    pii_index_old_keys: str = ""
    # True in production: refuse to start without real keys rather than use development ones.
    pii_keys_required: bool = False
    # Phones without a country code are read in this region (ISO 3166 code) for the index.
    phone_default_region: str = "CN"
    # Rows per batch of the background pass that encrypts legacy rows and re-keys old ones.
    pii_backfill_batch_size: int = Field(default=500, ge=1, le=10_000)
