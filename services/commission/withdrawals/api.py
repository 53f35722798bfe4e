"""HTTP routes of withdrawals, payee details and tax reports: parse, authorize, call one
service function, map the result."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response

from libs.common.auth import Caller
from libs.common.runtime import Runtime, get_caller, runtime_of
from libs.common.schemas import parse_id
from services.commission.withdrawals import reports, service
from services.commission.withdrawals.context import WithdrawalContext, providers_from
from services.commission.withdrawals.payee import PayeeInput
from services.commission.withdrawals.schemas import (
    MarkFailedIn,
    MarkPaidIn,
    PayeeIn,
    PayeeOut,
    RejectIn,
    Statement,
    WithdrawalIn,
    WithdrawalOut,
    WithdrawalPage,
)
from services.commission.withdrawals.settings import WithdrawalDeploySettings
from services.commission.withdrawals.withdrawals import WithdrawalRequest

router = APIRouter(prefix="/api/v1", tags=["withdrawals"])
_CONTEXT_KEY = "withdrawal_context"


async def withdrawal_context(request: Request) -> WithdrawalContext:
    """Built once per process from its runtime and the deploy settings."""
    state = request.app.state
    ctx: WithdrawalContext | None = getattr(state, _CONTEXT_KEY, None)
    if ctx is None:
        runtime: Runtime = runtime_of(request)
        deploy = WithdrawalDeploySettings()
        ctx = WithdrawalContext(
            db=runtime.db,
            ids=runtime.id_generator,
            zone=runtime.settings.zone,
            cipher=deploy.cipher(),
            settings_in_tx=runtime.business.in_tx,
            providers=providers_from(deploy),
        )
        setattr(state, _CONTEXT_KEY, ctx)
    return ctx


def _csv(body: str, filename: str) -> Response:
    return Response(
        content=body.encode("utf-8-sig"),  # the BOM lets spreadsheet programs read Chinese
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.put("/promoters/{promoter_id}/payee", response_model=PayeeOut)
async def put_payee(
    promoter_id: str,
    body: PayeeIn,
    caller: Caller = Depends(get_caller),
    ctx: WithdrawalContext = Depends(withdrawal_context),
) -> dict[str, Any]:
    pid = parse_id(promoter_id)
    caller.require_self_or(pid)
    payee = await service.save_payee(ctx, pid, PayeeInput(**body.model_dump()))
    return payee.view(unmasked=caller.may_read_pii())


@router.get("/promoters/{promoter_id}/payee", response_model=PayeeOut)
async def get_payee(
    promoter_id: str,
    caller: Caller = Depends(get_caller),
    ctx: WithdrawalContext = Depends(withdrawal_context),
) -> dict[str, Any]:
    pid = parse_id(promoter_id)
    caller.require_self_or(pid, "finance")
    payee = await service.read_payee(ctx, pid)
    return payee.view(unmasked=caller.may_read_pii())


@router.post("/withdrawals", response_model=WithdrawalOut, status_code=201)
async def create_withdrawal(
    body: WithdrawalIn,
    response: Response,
    caller: Caller = Depends(get_caller),
    ctx: WithdrawalContext = Depends(withdrawal_context),
) -> WithdrawalOut:
    caller.require_self_or(body.promoter_id)
    row, created = await service.request(
        ctx,
        WithdrawalRequest(
            promoter_id=body.promoter_id,
            amount=body.amount,
            channel=body.channel,
            idempotency_key=body.idempotency_key,
            currency=body.currency,
        ),
    )
    if not created:
        response.status_code = 200
    return WithdrawalOut.of(row)


@router.get("/withdrawals", response_model=WithdrawalPage)
async def list_withdrawals(
    status: str | None = Query(default=None),
    promoter_id: str | None = Query(default=None),
    cursor: str | None = Query(default=None),
    limit: int = Query(default=50, ge=1, le=200),
    caller: Caller = Depends(get_caller),
    ctx: WithdrawalContext = Depends(withdrawal_context),
) -> WithdrawalPage:
    pid = parse_id(promoter_id) if promoter_id is not None else None
    if pid is not None:
        caller.require_self_or(pid, "finance")
    else:
        caller.require("finance")
    rows, next_cursor = await service.search(
        ctx,
        status=status,
        promoter_id=pid,
        before_id=parse_id(cursor) if cursor else None,
        limit=limit,
    )
    return WithdrawalPage(
        items=[WithdrawalOut.of(r) for r in rows],
        next_cursor=str(next_cursor) if next_cursor is not None else None,
    )


@router.get("/withdrawals/transfer-file")
async def transfer_file(
    channel: str | None = Query(default=None),
    caller: Caller = Depends(get_caller),
    ctx: WithdrawalContext = Depends(withdrawal_context),
) -> Response:
    caller.require("finance")
    return _csv(await service.transfer_file(ctx, channel), "withdrawal-transfers.csv")


@router.get("/withdrawals/{withdrawal_id}", response_model=WithdrawalOut)
async def get_withdrawal(
    withdrawal_id: str,
    caller: Caller = Depends(get_caller),
    ctx: WithdrawalContext = Depends(withdrawal_context),
) -> WithdrawalOut:
    return WithdrawalOut.of(await service.get(ctx, parse_id(withdrawal_id), caller))


@router.post("/withdrawals/{withdrawal_id}/approve", response_model=WithdrawalOut)
async def approve(
    withdrawal_id: str,
    caller: Caller = Depends(get_caller),
    ctx: WithdrawalContext = Depends(withdrawal_context),
) -> WithdrawalOut:
    wid = parse_id(withdrawal_id)
    caller.require("finance")
    return WithdrawalOut.of(await service.approve(ctx, wid, caller))


@router.post("/withdrawals/{withdrawal_id}/reject", response_model=WithdrawalOut)
async def reject(
    withdrawal_id: str,
    body: RejectIn,
    caller: Caller = Depends(get_caller),
    ctx: WithdrawalContext = Depends(withdrawal_context),
) -> WithdrawalOut:
    wid = parse_id(withdrawal_id)
    caller.require("finance")
    return WithdrawalOut.of(await service.reject(ctx, wid, body.reason, caller))


@router.post("/withdrawals/{withdrawal_id}/cancel", response_model=WithdrawalOut)
async def cancel(
    withdrawal_id: str,
    caller: Caller = Depends(get_caller),
    ctx: WithdrawalContext = Depends(withdrawal_context),
) -> WithdrawalOut:
    # Authorized inside (the promoter owning it, or an admin), on the row being cancelled.
    return WithdrawalOut.of(await service.cancel(ctx, parse_id(withdrawal_id), caller))


@router.post("/withdrawals/{withdrawal_id}/payout", response_model=WithdrawalOut)
async def retry_payout(
    withdrawal_id: str,
    caller: Caller = Depends(get_caller),
    ctx: WithdrawalContext = Depends(withdrawal_context),
) -> WithdrawalOut:
    wid = parse_id(withdrawal_id)
    caller.require("finance")
    return WithdrawalOut.of(await service.retry_payout(ctx, wid, caller))


@router.post("/withdrawals/{withdrawal_id}/mark-paid", response_model=WithdrawalOut)
async def mark_paid(
    withdrawal_id: str,
    body: MarkPaidIn,
    caller: Caller = Depends(get_caller),
    ctx: WithdrawalContext = Depends(withdrawal_context),
) -> WithdrawalOut:
    wid = parse_id(withdrawal_id)
    caller.require("finance")
    return WithdrawalOut.of(await service.mark_paid(ctx, wid, body.voucher_reference, caller))


@router.post("/withdrawals/{withdrawal_id}/mark-failed", response_model=WithdrawalOut)
async def mark_failed(
    withdrawal_id: str,
    body: MarkFailedIn,
    caller: Caller = Depends(get_caller),
    ctx: WithdrawalContext = Depends(withdrawal_context),
) -> WithdrawalOut:
    wid = parse_id(withdrawal_id)
    caller.require("finance")
    return WithdrawalOut.of(await service.mark_failed(ctx, wid, body.reason, caller))


@router.get("/tax/reports/{month}")
async def tax_report(
    month: str,
    caller: Caller = Depends(get_caller),
    ctx: WithdrawalContext = Depends(withdrawal_context),
) -> Response:
    caller.require("finance")
    body = await reports.tax_report(ctx, month, unmasked=caller.may_read_pii())
    return _csv(body, f"tax-report-{reports.parse_month(month)}.csv")


@router.get("/accounts/{promoter_id}/statement", response_model=Statement)
async def statement(
    promoter_id: str,
    month: str = Query(..., description="YYYYMM or YYYY-MM, business timezone"),
    caller: Caller = Depends(get_caller),
    ctx: WithdrawalContext = Depends(withdrawal_context),
) -> dict[str, Any]:
    pid = parse_id(promoter_id)
    caller.require_self_or(pid, "finance")
    return await reports.statement(ctx, pid, month)
