"""HTTP routes of the commission service: parse, authorize, call one service function, map."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from libs.common.auth import PROMOTER, Caller
from libs.common.ids import IdGenerator
from libs.common.runtime import Runtime, get_caller, get_runtime
from libs.common.schemas import parse_id
from services.commission import records, service
from services.commission.accounts import account_balances
from services.commission.context import CommissionContext, CommissionServiceSettings
from services.commission.models import tables_for
from services.commission.schemas import (
    AccountOut,
    CommissionList,
    CommissionOut,
    RuleIn,
    RuleList,
    RuleOut,
    SettlementRunOut,
    VerifyOut,
)

router = APIRouter(prefix="/api/v1", tags=["commission"])


def commission_context(runtime: Runtime) -> CommissionContext:
    ids: IdGenerator = runtime.id_generator
    return CommissionContext(ids, tables_for(runtime.settings.timezone))


def _context(runtime: Runtime = Depends(get_runtime)) -> CommissionContext:
    return commission_context(runtime)


@router.post("/commission/rules", status_code=201, response_model=RuleOut)
async def create_rule(
    body: RuleIn,
    runtime: Runtime = Depends(get_runtime),
    ctx: CommissionContext = Depends(_context),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    caller.require()
    return await service.create_rule(runtime.db, ctx, caller, body)


@router.get("/commission/rules", response_model=RuleList)
async def list_rules(
    history: bool = Query(False, description="every version, also deactivated ones"),
    runtime: Runtime = Depends(get_runtime),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    caller.require("finance", PROMOTER, "platform")
    return {"items": await service.list_rules(runtime.db, history)}


@router.delete("/commission/rules/{rule_id}", response_model=RuleOut)
async def deactivate_rule(
    rule_id: str, runtime: Runtime = Depends(get_runtime), caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    caller.require()
    return await service.deactivate_rule(runtime.db, caller, parse_id(rule_id))


@router.get("/orders/{order_id}/commissions", response_model=CommissionList)
async def order_commissions(
    order_id: str,
    runtime: Runtime = Depends(get_runtime),
    ctx: CommissionContext = Depends(_context),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    parsed = parse_id(order_id)
    if caller.is_admin or caller.roles & {"finance", "platform"}:
        items = await records.order_commissions(runtime.db, ctx.tables, parsed)
    else:
        # A promoter sees only their own lines of the order.
        caller.require(PROMOTER)
        items = [
            r
            for r in await records.order_commissions(runtime.db, ctx.tables, parsed)
            if r["beneficiary_id"] == caller.user_id
        ]
    return {"items": items}


@router.get("/commissions", response_model=CommissionList)
async def promoter_commissions(
    beneficiary_id: str = Query(...),
    status: str | None = Query(None),
    cursor: str | None = Query(None),
    limit: int = Query(50, ge=1, le=200),
    runtime: Runtime = Depends(get_runtime),
    ctx: CommissionContext = Depends(_context),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    promoter_id = parse_id(beneficiary_id)
    caller.require_self_or(promoter_id, "finance")
    items, next_cursor = await records.promoter_commissions(
        runtime.db, ctx.tables, promoter_id, status, cursor, limit
    )
    return {"items": items, "next_cursor": next_cursor}


@router.get("/commissions/{record_id}", response_model=CommissionOut)
async def one_commission(
    record_id: str,
    runtime: Runtime = Depends(get_runtime),
    ctx: CommissionContext = Depends(_context),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    record = await records.commission_by_id(runtime.db, ctx.tables, parse_id(record_id))
    caller.require_self_or(int(record["beneficiary_id"]), "finance")
    return record


@router.post("/commissions/{record_id}/hold", response_model=CommissionOut)
async def hold_commission(
    record_id: str,
    runtime: Runtime = Depends(get_runtime),
    ctx: CommissionContext = Depends(_context),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    caller.require()
    return await service.change_hold(runtime.db, ctx, caller, parse_id(record_id), hold=True)


@router.post("/commissions/{record_id}/release", response_model=CommissionOut)
async def release_commission(
    record_id: str,
    runtime: Runtime = Depends(get_runtime),
    ctx: CommissionContext = Depends(_context),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    caller.require()
    return await service.change_hold(runtime.db, ctx, caller, parse_id(record_id), hold=False)


@router.get("/accounts/{promoter_id}", response_model=AccountOut)
async def account(
    promoter_id: str, runtime: Runtime = Depends(get_runtime), caller: Caller = Depends(get_caller)
) -> dict[str, Any]:
    parsed = parse_id(promoter_id)
    caller.require_self_or(parsed, "finance")
    return await account_balances(runtime.db, parsed)


@router.post("/settlements/run", response_model=SettlementRunOut)
async def run_settlement(
    runtime: Runtime = Depends(get_runtime),
    ctx: CommissionContext = Depends(_context),
    caller: Caller = Depends(get_caller),
) -> dict[str, Any]:
    caller.require()
    settings = runtime.settings
    assert isinstance(settings, CommissionServiceSettings)
    batch_size = settings.settle_batch_size
    result = await service.run_settlement(runtime.db, ctx, caller, batch_size=batch_size)
    return {
        "orders_settled": result.orders,
        "records_settled": result.records,
        "amount": result.amount,
    }


@router.get("/ledger/verify", response_model=VerifyOut)
async def verify_ledger(
    runtime: Runtime = Depends(get_runtime),
    ctx: CommissionContext = Depends(_context),
    caller: Caller = Depends(get_caller),
) -> Any:
    caller.require()
    return (await service.verify_ledger(runtime.db, ctx)).__dict__
