"""The withdrawal use cases as the API calls them: one function per request, each running
its transaction(s) and, for payouts, the provider call between them."""

from __future__ import annotations

from typing import Any

from libs.common import audit
from libs.common.auth import Caller
from libs.common.db.engine import Tx
from libs.common.errors import BadRequest
from services.commission.ledger import run_guarded
from services.commission.withdrawals import payouts_flow, withdrawals
from services.commission.withdrawals.context import WithdrawalContext
from services.commission.withdrawals.payee import Payee, PayeeInput, get_payee, put_payee
from services.commission.withdrawals.settings import CHANNELS, WithdrawalPolicy
from services.commission.withdrawals.withdrawals import WithdrawalRequest

STATUSES = ("pending", "approved", "paid", "failed", "rejected", "cancelled")


async def _audit(
    tx: Tx, caller: Caller, action: str, withdrawal_id: int, before: Any, after: Any
) -> None:
    if audit.is_audited(caller):
        keep = ("status", "amount", "fee_amount", "tax_amount", "net_amount", "reason", "payout_id")
        await audit.record(
            await tx.main(),
            caller,
            action,
            "withdrawal",
            withdrawal_id,
            before={k: before.get(k) for k in keep} if before else None,
            after={k: after.get(k) for k in keep} if after else None,
        )


async def save_payee(ctx: WithdrawalContext, promoter_id: int, payee: PayeeInput) -> Payee:
    async def work(tx: Tx) -> Payee:
        return await put_payee(tx, ctx.cipher, promoter_id, payee)

    return await ctx.db.run(work)


async def read_payee(ctx: WithdrawalContext, promoter_id: int) -> Payee:
    async with ctx.db.read(may_lag=False) as conn:
        return await get_payee(conn, ctx.cipher, promoter_id)


async def request(
    ctx: WithdrawalContext, request: WithdrawalRequest
) -> tuple[dict[str, Any], bool]:
    if request.channel not in CHANNELS:
        raise BadRequest(
            f"unknown channel {request.channel}",
            code="withdrawal.channel_not_allowed",
            details={"channels": list(CHANNELS)},
        )

    async def work(tx: Tx) -> tuple[dict[str, Any], bool]:
        policy = WithdrawalPolicy.from_settings(await ctx.settings_in_tx(tx))
        return await withdrawals.request_withdrawal(tx, ctx, policy, request)

    result: tuple[dict[str, Any], bool] = await run_guarded(ctx.db, work)
    return result


async def get(
    ctx: WithdrawalContext, withdrawal_id: int, caller: Caller | None = None
) -> dict[str, Any]:
    """One withdrawal; with a caller, only if it is theirs or they audit (403 otherwise)."""
    async with ctx.db.read(may_lag=False) as conn:
        row = await withdrawals.load(conn, withdrawal_id)
    if caller is not None:
        caller.require_self_or(row["promoter_id"], "finance")
    return row


async def search(
    ctx: WithdrawalContext,
    *,
    status: str | None,
    promoter_id: int | None,
    before_id: int | None,
    limit: int,
) -> tuple[list[dict[str, Any]], int | None]:
    if status is not None and status not in STATUSES:
        raise BadRequest(
            f"unknown status {status}",
            code="withdrawal.bad_status",
            details={"statuses": list(STATUSES)},
        )
    async with ctx.db.read(may_lag=True) as conn:
        return await withdrawals.list_withdrawals(
            conn, status=status, promoter_id=promoter_id, before_id=before_id, limit=limit
        )


async def cancel(ctx: WithdrawalContext, withdrawal_id: int, caller: Caller) -> dict[str, Any]:
    """The promoter (or an admin for it) takes back a pending withdrawal."""

    async def work(tx: Tx) -> dict[str, Any]:
        before = await withdrawals.load(await tx.main(), withdrawal_id)
        caller.require_self_or(before["promoter_id"])
        after = await withdrawals.cancel_withdrawal(tx, ctx, withdrawal_id)
        # an admin cancelling for a promoter is audited; the promoter itself is not
        await _audit(tx, caller, "withdrawal.cancel", withdrawal_id, before, after)
        return after

    result: dict[str, Any] = await run_guarded(ctx.db, work)
    return result


async def reject(
    ctx: WithdrawalContext, withdrawal_id: int, reason: str, caller: Caller
) -> dict[str, Any]:
    async def work(tx: Tx) -> dict[str, Any]:
        before, after = await withdrawals.reject_withdrawal(
            tx, ctx, withdrawal_id, reason, caller.subject
        )
        await _audit(tx, caller, "withdrawal.reject", withdrawal_id, before, after)
        return after

    result: dict[str, Any] = await run_guarded(ctx.db, work)
    return result


async def approve(ctx: WithdrawalContext, withdrawal_id: int, caller: Caller) -> dict[str, Any]:
    """Approve, then hand an automatic payout (WeChat) to its provider at once."""

    async def work(tx: Tx) -> None:
        before, after = await withdrawals.approve_withdrawal(tx, ctx, withdrawal_id, caller.subject)
        await _audit(tx, caller, "withdrawal.approve", withdrawal_id, before, after)

    await ctx.db.run(work)
    return await payouts_flow.dispatch_payout(ctx, withdrawal_id)


async def retry_payout(
    ctx: WithdrawalContext, withdrawal_id: int, caller: Caller
) -> dict[str, Any]:
    before = await get(ctx, withdrawal_id)
    after = await payouts_flow.retry_payout(ctx, withdrawal_id)

    async def work(tx: Tx) -> None:
        await _audit(tx, caller, "withdrawal.retry_payout", withdrawal_id, before, after)

    await ctx.db.run(work)
    return after


async def mark_paid(
    ctx: WithdrawalContext, withdrawal_id: int, voucher_reference: str, caller: Caller
) -> dict[str, Any]:
    async def work(tx: Tx) -> dict[str, Any]:
        before = await withdrawals.load(await tx.main(), withdrawal_id)
        after = await payouts_flow.mark_paid(tx, ctx, withdrawal_id, voucher_reference)
        await _audit(tx, caller, "withdrawal.mark_paid", withdrawal_id, before, after)
        return after

    result: dict[str, Any] = await run_guarded(ctx.db, work)
    return result


async def mark_failed(
    ctx: WithdrawalContext, withdrawal_id: int, reason: str, caller: Caller
) -> dict[str, Any]:
    async def work(tx: Tx) -> dict[str, Any]:
        before = await withdrawals.load(await tx.main(), withdrawal_id)
        after = await payouts_flow.mark_failed(tx, ctx, withdrawal_id, reason)
        await _audit(tx, caller, "withdrawal.mark_failed", withdrawal_id, before, after)
        return after

    result: dict[str, Any] = await run_guarded(ctx.db, work)
    return result


async def transfer_file(ctx: WithdrawalContext, channel: str | None) -> str:
    if channel is not None and channel not in CHANNELS:
        raise BadRequest(f"unknown channel {channel}", code="withdrawal.channel_not_allowed")
    return await payouts_flow.export_transfer_file(ctx, channel)
