"""Request and response models of the withdrawal API (ARCHITECTURE §9 names)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from libs.common.schemas import Id


class PayeeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    real_name: str = Field(min_length=1, max_length=64)
    id_number: str = Field(min_length=1, max_length=32)
    bank_card: str | None = Field(default=None, max_length=40)
    bank_name: str | None = Field(default=None, max_length=64)
    wechat_openid: str | None = Field(default=None, max_length=128)
    alipay_account: str | None = Field(default=None, max_length=100)


class PayeeOut(BaseModel):
    promoter_id: Id
    real_name: str
    id_number: str
    bank_card: str | None
    bank_name: str | None
    wechat_openid: str | None
    alipay_account: str | None
    channels: list[str]
    masked: bool
    created_at: datetime
    updated_at: datetime


class WithdrawalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    promoter_id: Id
    amount: int = Field(gt=0, le=10**15, description="minor units (fen)")
    channel: str = Field(min_length=1, max_length=16)
    idempotency_key: str = Field(min_length=1, max_length=128)
    currency: str = Field(default="CNY", pattern="^[A-Z]{3}$")


class RejectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500)


class MarkPaidIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    voucher_reference: str = Field(min_length=1, max_length=128)


class MarkFailedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500)


class WithdrawalOut(BaseModel):
    id: Id
    promoter_id: Id
    amount: int
    fee_bps: int
    fee_amount: int
    tax_amount: int
    net_amount: int
    currency: str
    channel: str
    status: str
    reason: str | None
    idempotency_key: str
    tax_withholding: str
    tax_month: str
    payout_id: str | None
    payout_provider: str | None
    payout_attempts: int
    payout_reference: str | None
    audited_by: str | None
    requested_at: datetime
    audited_at: datetime | None
    paid_at: datetime | None

    @classmethod
    def of(cls, row: dict[str, Any]) -> WithdrawalOut:
        return cls.model_validate({k: row.get(k) for k in cls.model_fields})


class WithdrawalPage(BaseModel):
    items: list[WithdrawalOut]
    next_cursor: str | None = None


class StatementEntry(BaseModel):
    id: Id
    created_at: datetime
    kind: str
    idempotency_key: str
    debit_account: str
    credit_account: str
    amount: int
    currency: str
    order_id: Id | None
    effects: dict[str, int]


class Statement(BaseModel):
    promoter_id: Id
    month: str
    currency: str
    opening: dict[str, int]
    closing: dict[str, int]
    entries: list[StatementEntry]
