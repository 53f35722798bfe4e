"""Request and response models of the user service (ids as decimal strings)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.common.schemas import Id

BindSource = Literal["link", "code", "qr", "admin"]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateUser(Body):
    external_id: str = Field(min_length=1, max_length=128)
    platform: str = Field(default="default", pattern=r"^[A-Za-z0-9_.\-]{1,32}$")
    nickname: str | None = Field(default=None, max_length=64)
    phone: str | None = Field(default=None, max_length=32, pattern=r"^\+?[0-9\- ]{3,32}$")
    device_id: str | None = Field(default=None, max_length=128)


class UserOut(BaseModel):
    id: Id
    platform: str
    external_id: str
    nickname: str | None
    phone: str | None
    device_id: str | None
    created_at: datetime


class UserPage(BaseModel):
    items: list[UserOut]


class CreatePromoter(Body):
    user_id: Id
    # An admin files an application for the user (pending) instead of granting at once.
    apply: bool = False


class PromoterOut(BaseModel):
    user_id: Id
    code: str
    status: str
    tier: str | None = None
    applied_at: datetime | None = None
    approved_at: datetime | None = None


class Bind(Body):
    user_id: Id
    promoter_code: str = Field(min_length=1, max_length=32)
    source: BindSource = "code"


class RelationOut(BaseModel):
    user_id: Id
    parent_id: Id | None
    root_id: Id
    level: int
    path: str
    bound_at: datetime | None
    bind_source: str | None
    expires_at: datetime | None
    active: bool


class BindOut(RelationOut):
    changed: bool


class Attribution(Body):
    buyer_user_id: Id
    # Any string: a code that is no promoter's is ignored, never an error (the contract).
    promoter_code: str | None = None
    levels: int = Field(default=3, ge=1, le=10)


class BeneficiaryOut(BaseModel):
    level: int
    user_id: Id


class AttributionOut(BaseModel):
    buyer_user_id: Id
    promoter_id: Id | None
    beneficiaries: list[BeneficiaryOut]
    rebound: bool
    bound: bool


class AncestorOut(BaseModel):
    user_id: Id
    level: int


class AncestorsOut(BaseModel):
    items: list[AncestorOut]


class ChildOut(BaseModel):
    user_id: Id
    bound_at: datetime
    bind_source: str
    level: int
    expires_at: datetime | None


class ChildrenOut(BaseModel):
    items: list[ChildOut]
    next_cursor: str | None


class TeamOut(BaseModel):
    user_id: Id
    level1_count: int
    level2_count: int
    level3_count: int
    team_size: int


class Move(Body):
    parent_id: Id
    reason: str = Field(min_length=1, max_length=255)


class MoveJobOut(BaseModel):
    id: Id
    user_id: Id
    status: str
    rows_done: int
    created_at: datetime
    finished_at: datetime | None


class MoveOut(BaseModel):
    relation: RelationOut
    job: MoveJobOut | None


class HistoryOut(BaseModel):
    id: Id
    user_id: Id
    parent_id: Id
    previous_parent_id: Id | None
    kind: str
    bind_source: str
    reason: str | None
    created_at: datetime


class HistoryPage(BaseModel):
    items: list[HistoryOut]
