"""HTTP routes of the stats service: parse, authorize, call one service function, map."""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi import APIRouter, Depends, Query

from libs.common.auth import Caller, internal_headers
from libs.common.runtime import Runtime, get_caller, get_runtime
from libs.common.schemas import parse_id
from services.stats import reads
from services.stats.schemas import Leaderboard, PromoterDailyStats, PromoterSummary, TeamStats
from services.stats.service import StatsStores

router = APIRouter(prefix="/api/v1/stats", tags=["stats"])

FROM = Query(default=None, alias="from", description="first day, YYYY-MM-DD (business timezone)")
TO = Query(default=None, description="last day, YYYY-MM-DD (default today)")


@router.get("/promoters/{promoter_id}", response_model=PromoterDailyStats)
async def promoter_daily(
    promoter_id: str,
    first: date | None = FROM,
    last: date | None = Query(default=None, alias="to", description="last day (default today)"),
    runtime: Runtime = Depends(get_runtime),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    pid = parse_id(promoter_id)
    caller.require_self_or(pid, "finance")
    return await reads.daily_view(runtime.db, StatsStores.of(runtime), pid, first, last)


@router.get("/promoters/{promoter_id}/summary", response_model=PromoterSummary)
async def promoter_summary(
    promoter_id: str,
    runtime: Runtime = Depends(get_runtime),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    pid = parse_id(promoter_id)
    caller.require_self_or(pid, "finance")
    return await reads.summary_with_balances(
        runtime.db,
        StatsStores.of(runtime),
        pid,
        runtime.settings.commission_service_url,
        internal_headers(runtime.settings),
    )


@router.get("/promoters/{promoter_id}/team", response_model=TeamStats)
async def promoter_team(
    promoter_id: str,
    first: date | None = FROM,
    last: date | None = Query(default=None, alias="to", description="last day (default today)"),
    runtime: Runtime = Depends(get_runtime),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    pid = parse_id(promoter_id)
    caller.require_self_or(pid, "finance")
    return await reads.team_view(runtime.db, StatsStores.of(runtime), pid, first, last)


@router.get("/leaderboard", response_model=Leaderboard)
async def leaderboard(
    metric: str = Query(
        default="commission", description="commission | new_customers | order_amount"
    ),
    period: str = Query(default="day", description="day | week | month"),
    day: date | None = Query(default=None, description="a day of the period (default today)"),
    limit: int = Query(default=100, description="top N, 1..500"),
    promoter_id: str | None = Query(
        default=None, description="whose rank to show (a promoter caller: themself)"
    ),
    runtime: Runtime = Depends(get_runtime),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    me = parse_id(promoter_id) if promoter_id is not None else caller.user_id
    return await reads.leaderboard_view(StatsStores.of(runtime), metric, period, day, limit, me)
