"""Request and response models of the order service (ARCHITECTURE §9, the order rows)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from libs.common.schemas import Id


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class OrderItemIn(_Body):
    sku: str = Field(min_length=1, max_length=128)
    category: str = Field(default="default", min_length=1, max_length=128)
    quantity: StrictInt = Field(ge=1, le=1_000_000)
    unit_price_amount: StrictInt
    paid_amount: StrictInt


class OrderIn(_Body):
    platform: str = Field(default="default", min_length=1, max_length=32)
    order_no: str = Field(min_length=1, max_length=128)
    buyer_user_id: Id
    promoter_code: str | None = Field(default=None, max_length=64)
    currency: str = Field(default="CNY", min_length=3, max_length=3)
    items: list[OrderItemIn] = Field(min_length=1, max_length=500)
    shipping_amount: StrictInt = 0


class LifecycleIn(_Body):
    """The optional body of /pay, /complete, /close: when it happened on the platform."""

    at: datetime | None = None


class RefundItemIn(_Body):
    sku: str = Field(min_length=1, max_length=128)
    # None = everything this item still has paid.
    amount: StrictInt | None = None


class RefundIn(_Body):
    """``{refund_no, items}`` per item, ``{refund_no, amount}`` spread over the items, or
    ``{refund_no}`` alone: everything still paid."""

    refund_no: str = Field(min_length=1, max_length=128)
    items: list[RefundItemIn] | None = Field(default=None, min_length=1, max_length=500)
    amount: StrictInt | None = None


class BeneficiaryOut(BaseModel):
    level: int
    user_id: Id


class OrderItemOut(BaseModel):
    id: Id
    sku: str
    category: str
    quantity: int
    unit_price_amount: int
    paid_amount: int
    refunded_amount: int


class OrderOut(BaseModel):
    id: Id
    platform: str
    order_no: str
    buyer_user_id: Id
    currency: str
    status: str
    promoter_code: str | None
    promoter_id: Id | None
    beneficiaries: list[BeneficiaryOut]
    attribution_status: str
    items: list[OrderItemOut]
    shipping_amount: int
    paid_amount: int
    refunded_amount: int
    created_at: datetime
    paid_at: datetime | None
    completed_at: datetime | None
    closed_at: datetime | None


class RefundedItemOut(BaseModel):
    item_id: Id
    sku: str
    refunded_amount: int
    remaining_paid_amount: int


class RefundOut(BaseModel):
    id: Id
    order_id: Id
    refund_no: str
    amount: int
    currency: str
    items: list[RefundedItemOut]
    created_at: datetime


class OrderRefundsOut(BaseModel):
    items: list[RefundOut]
