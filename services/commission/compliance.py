"""Compliance profiles (ARCHITECTURE §6) and the business settings they live in.

A profile bounds how many commission levels a rule may have and how much all levels together
may take of an item's paid amount. China's 禁止传销条例 art. 7 makes pay on a downline's
sales through many levels, and pay for recruiting, the core of pyramid selling; WeChat allows
single-level CPS. Commissions here are only ever earned on paid orders: no rule can pay for
a bind or a recruit (the rule model has no such field), and there is no entry fee.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import Field

from libs.common.business_settings import SettingsModel
from libs.common.db.engine import Tx
from libs.common.errors import BadRequest, Conflict

Channel = Literal["bank", "wechat", "alipay", "manual"]


@dataclass(frozen=True)
class Profile:
    name: str
    max_levels: int
    total_cap_bps: int


class CommissionSettings(SettingsModel):
    compliance_profile: Literal["cn", "cn-wechat", "global"] = "cn"
    frozen_days: int = Field(default=7, ge=0, le=365)
    withdraw_min_amount: int = Field(default=100, ge=0)
    withdraw_fee_bps: int = Field(default=0, ge=0, le=10_000)
    withdraw_daily_limit_amount: int = Field(default=5_000_000, ge=0)
    tax_withholding: Literal["cn_labor", "none"] = "cn_labor"
    disabled_ancestor_policy: Literal["forfeit", "compress"] = "forfeit"
    # Level 0: a promoter earning on their own order (off by default).
    self_purchase_enabled: bool = False
    # The total cap of the `global` profile (cn and cn-wechat are fixed at 30%).
    global_total_cap_bps: int = Field(default=5_000, ge=0, le=10_000)
    withdraw_channels: list[Channel] = Field(default_factory=lambda: list(get_args(Channel)))


def profile_of(settings: CommissionSettings) -> Profile:
    if settings.compliance_profile == "cn-wechat":
        return Profile("cn-wechat", 1, 3_000)
    if settings.compliance_profile == "global":
        return Profile("global", 10, settings.global_total_cap_bps)
    return Profile("cn", 2, 3_000)


@dataclass(frozen=True)
class LevelTerms:
    """One level of a rule: a rate (optionally capped per line) or a fixed amount per unit."""

    level: int
    rate_bps: int | None = None
    cap_amount: int | None = None
    fixed_amount: int | None = None
    # Optional rate by the earner's promoter tier ({"gold": 1500}); others get rate_bps.
    tier_rates: dict[str, int] | None = None

    def highest_rate(self) -> int:
        return max([self.rate_bps or 0, *(self.tier_rates or {}).values()])


def rule_violations(levels: list[LevelTerms], profile: Profile) -> list[dict[str, object]]:
    """What in a rule the profile forbids (empty: allowed).

    Levels beyond the profile's count are refused; rates are summed over all levels (level 0,
    self-purchase, included) and must stay within the profile's total cap. Fixed amounts
    cannot be judged without an item's price: accrual clamps an item's lines to the cap.
    """
    problems: list[dict[str, object]] = []
    deepest = max((t.level for t in levels), default=0)
    if deepest > profile.max_levels:
        problems.append(
            {
                "code": "compliance.too_many_levels",
                "profile": profile.name,
                "max_levels": profile.max_levels,
                "level": deepest,
            }
        )
    total_rate = sum(t.highest_rate() for t in levels)
    if total_rate > profile.total_cap_bps:
        problems.append(
            {
                "code": "compliance.total_rate_exceeded",
                "profile": profile.name,
                "total_cap_bps": profile.total_cap_bps,
                "total_rate_bps": total_rate,
            }
        )
    return problems


def check_rule(levels: list[LevelTerms], profile: Profile) -> None:
    """Refuse (400, nothing saved) a rule the compliance profile forbids."""
    problems = rule_violations(levels, profile)
    if problems:
        first = problems[0]
        if first["code"] == "compliance.too_many_levels":
            message = (
                f"profile {profile.name} allows at most {profile.max_levels} commission "
                f"level(s); the rule has level {first['level']}"
            )
        else:
            message = (
                f"profile {profile.name} allows at most {profile.total_cap_bps} bps over all "
                f"levels; the rule totals {first['total_rate_bps']} bps"
            )
        raise BadRequest(message, code=str(first["code"]), details={"violations": problems})


async def check_settings_change(
    tx: Tx, before: CommissionSettings, after: CommissionSettings
) -> None:
    """A stricter compliance profile is refused while rules in force (or scheduled) would
    break it: deactivate or replace those rules first."""
    from services.commission.rules import rules_not_deactivated

    if profile_of(before) == profile_of(after):
        return
    profile = profile_of(after)
    offending = []
    for rule in await rules_not_deactivated(await tx.main()):
        problems = rule_violations(rule.levels, profile)
        if problems:
            offending.append({"rule_id": str(rule.id), "violations": problems})
    if offending:
        raise Conflict(
            f"rules in force would break the {profile.name} profile; deactivate them first",
            code="compliance.rules_in_force_violate_profile",
            details={"rules": offending},
        )


def validate_levels(levels: list[LevelTerms]) -> None:
    """Shape rules every profile shares: unique levels, one way to pay per level."""
    if not levels:
        raise BadRequest("a rule needs at least one level", code="commission.rule_invalid")
    seen: set[int] = set()
    for terms in levels:
        if terms.level in seen:
            raise BadRequest(f"level {terms.level} appears twice", code="commission.rule_invalid")
        seen.add(terms.level)
        if (terms.rate_bps is None) == (terms.fixed_amount is None):
            raise BadRequest(
                f"level {terms.level}: give either rate_bps or fixed_amount",
                code="commission.rule_invalid",
            )
        if terms.tier_rates and terms.rate_bps is None:
            raise BadRequest(
                f"level {terms.level}: tier_rates go with rate_bps",
                code="commission.rule_invalid",
            )
        if terms.cap_amount is not None and terms.rate_bps is None:
            raise BadRequest(
                f"level {terms.level}: cap_amount goes with rate_bps",
                code="commission.rule_invalid",
            )
