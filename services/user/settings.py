"""The user service's business settings (``GET/PUT /api/v1/settings/user``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from libs.common.business_settings import SettingsModel

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
