"""Response models of the stats API (ARCHITECTURE §9: names and fields are a contract)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from libs.common.schemas import Id


class FiguresOut(BaseModel):
    order_count: int = Field(description="orders paid, counted on the payment day")
    order_amount: int = Field(
        description="items' paid amount at payment, minus refunds on the refund's day (fen)"
    )
    commission_amount: int = Field(description="commission accrued minus reversed that day")
    settled_commission_amount: int = Field(description="commission settled that day")
    new_customers: int = Field(description="direct binds that day")


class DailyStats(FiguresOut):
    day: str


class PromoterDailyStats(BaseModel):
    promoter_id: Id
    from_: str = Field(alias="from", serialization_alias="from")
    to: str
    items: list[DailyStats]


class PromoterSummary(BaseModel):
    promoter_id: Id
    day: str = Field(description="today in the business timezone")
    today: FiguresOut
    yesterday: FiguresOut
    this_month: FiguresOut
    all_time: FiguresOut
    frozen_amount: int | None = Field(description="null when the commission service is down")
    available_amount: int | None = Field(description="null when the commission service is down")
    currency: str | None


class TeamFigures(BaseModel):
    level1: FiguresOut
    level2: FiguresOut
    team: FiguresOut


class TeamDay(TeamFigures):
    day: str


class TeamStats(BaseModel):
    promoter_id: Id
    from_: str = Field(alias="from", serialization_alias="from")
    to: str
    totals: TeamFigures
    items: list[TeamDay]


class RankedOut(BaseModel):
    rank: int | None = Field(description="1 = first; null when not on the board")
    promoter_id: Id
    value: int


class Leaderboard(BaseModel):
    metric: str
    period: str
    period_key: str
    from_: str = Field(alias="from", serialization_alias="from")
    to: str
    items: list[RankedOut]
    me: RankedOut | None
