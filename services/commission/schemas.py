"""Request and response models of the commission service's API (ARCHITECTURE §9)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.common.schemas import Id


class LevelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    level: int = Field(ge=0, le=10, description="1 = the buyer's parent; 0 = self-purchase")
    rate_bps: int | None = Field(default=None, ge=0, le=10_000)
    cap_amount: int | None = Field(default=None, ge=0)
    fixed_amount: int | None = Field(default=None, ge=0, description="per unit")
    tier_rates: dict[str, Annotated[int, Field(ge=0, le=10_000)]] | None = Field(
        default=None, description="rate_bps by the earner's promoter tier"
    )


class RuleIn(BaseModel):
    # No field can pay for a bind or a recruit: commissions are earned on paid orders only.
    model_config = ConfigDict(extra="forbid")

    scope: Literal["default", "category", "product"]
    key: str | None = Field(default=None, max_length=191)
    levels: list[LevelIn] = Field(min_length=1, max_length=11)
    effective_from: datetime | None = None


class LevelOut(BaseModel):
    level: int
    rate_bps: int | None
    cap_amount: int | None
    fixed_amount: int | None
    tier_rates: dict[str, int] | None = None


class RuleOut(BaseModel):
    id: Id
    scope: str
    key: str | None
    version: int
    levels: list[LevelOut]
    effective_from: datetime
    created_at: datetime
    deactivated_at: datetime | None
    active: bool


class RuleList(BaseModel):
    items: list[RuleOut]


class CommissionOut(BaseModel):
    id: Id
    order_id: Id
    item_id: Id
    sku: str
    category: str
    level: int
    beneficiary_id: Id
    buyer_user_id: Id
    currency: str
    quantity: int
    item_paid_amount: int
    base_amount: int
    rate_bps: int | None
    cap_amount: int | None
    fixed_amount: int | None
    accrued_amount: int
    reversed_amount: int
    amount: int
    status: str
    clamped: bool
    note: str | None
    rule_id: Id | None
    rule_version: int | None
    paid_at: datetime
    created_at: datetime
    unfreeze_at: datetime | None
    settled_at: datetime | None


class CommissionList(BaseModel):
    items: list[CommissionOut]
    next_cursor: str | None = None


class AccountOut(BaseModel):
    promoter_id: Id
    frozen_amount: int
    available_amount: int
    withdrawing_amount: int
    paid_out_amount: int
    currency: str


class SettlementRunOut(BaseModel):
    orders_settled: int
    records_settled: int
    amount: int


class VerifyOut(BaseModel):
    ok: bool
    transfers_checked: int
    promoters_checked: int
    broken_chains: list[dict[str, Any]]
    balance_mismatches: list[dict[str, Any]]
    settlement_mismatches: list[dict[str, Any]] = []
    ledger_total: int
    platform_balances: dict[str, int]
    checked_at: datetime
