"""Paying approved withdrawals through a payout provider, retrying failed payouts, and the
manual provider's two hands (the transfer file, marking paid or failed).

A payout id (``W<id>A<attempt>``) is the provider's idempotency key. Sending happens outside
any database transaction (an HTTP call must not be retried with the transaction); its
outcome is written afterwards in one. When the outcome is unknown the withdrawal stays
``approved`` with the same payout id, so asking again can never pay twice; only a payout the
provider reports failed leaves the withdrawal ``failed``, and a retry then takes a new id.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, select, update

from libs.common.db.engine import Tx
from libs.common.errors import BadRequest, Conflict
from libs.common.messaging.outbox import utcnow
from services.commission.ledger import (
    PLATFORM_FEE_INCOME,
    PLATFORM_TAX_PAYABLE,
    Transfer,
    post_transfers,
    promoter_account,
    run_guarded,
)
from services.commission.withdrawals.context import WithdrawalContext
from services.commission.withdrawals.models import payout_attempts, withdrawals
from services.commission.withdrawals.payee import load_payee
from services.commission.withdrawals.payouts import (
    PayoutRequest,
    PayoutResult,
    PayoutUnknown,
    payout_id_for,
)
from services.commission.withdrawals.payouts.manual import TransferLine, transfer_file
from services.commission.withdrawals.withdrawals import (
    load,
    publish_change,
    transition,
)


async def complete_payout(
    tx: Tx, ctx: WithdrawalContext, withdrawal_id: int, reference: str | None
) -> dict[str, Any]:
    """The money arrived: withdrawing → paid_out (net), tax payable (tax), fee income (fee)."""
    conn = await tx.main()
    now = utcnow()
    before = await transition(
        conn,
        withdrawal_id,
        ("approved",),
        {
            "status": "paid",
            "paid_at": now,
            "payout_reference": reference,
            "reason": None,
            "updated_at": now,
        },
        "withdrawal.not_payable",
    )
    promoter_id, currency = before["promoter_id"], before["currency"]
    withdrawing = promoter_account(promoter_id, "withdrawing")
    parts = [
        ("net", promoter_account(promoter_id, "paid_out"), before["net_amount"]),
        ("tax", PLATFORM_TAX_PAYABLE, before["tax_amount"]),
        ("fee", PLATFORM_FEE_INCOME, before["fee_amount"]),
    ]
    await post_transfers(
        tx,
        ctx.ids,
        ctx.tables,
        [
            Transfer(
                kind="payout",
                key=f"payout:{withdrawal_id}:{name}",
                debit=withdrawing,
                credit=credit,
                amount=amount,
                currency=currency,
            )
            for name, credit, amount in parts
            if amount > 0
        ],
        now=now,
    )
    await _record_attempt(tx, before, "paid", reference, None)
    after = await load(conn, withdrawal_id)
    await publish_change(tx, after, "withdrawal.paid", str(withdrawal_id))
    return after


async def fail_payout(
    tx: Tx, ctx: WithdrawalContext, withdrawal_id: int, reason: str, reference: str | None = None
) -> dict[str, Any]:
    """The provider refused or returned the payout: the money stays withdrawing until the
    payout is retried (new payout id) or the withdrawal is rejected (money back)."""
    conn = await tx.main()
    before = await transition(
        conn,
        withdrawal_id,
        ("approved",),
        {"status": "failed", "reason": reason[:500], "updated_at": utcnow()},
        "withdrawal.not_payable",
    )
    await _record_attempt(tx, before, "failed", reference, reason)
    after = await load(conn, withdrawal_id)
    await publish_change(
        tx, after, "withdrawal.failed", f"{withdrawal_id}:{before['payout_attempts']}"
    )
    return after


async def _record_attempt(
    tx: Tx, row: dict[str, Any], status: str, reference: str | None, reason: str | None
) -> None:
    conn = await tx.main()
    now = utcnow()
    values = {
        "status": status,
        "provider_reference": reference,
        "failure_reason": None if reason is None else reason[:500],
        "updated_at": now,
    }
    changed = await conn.execute(
        update(payout_attempts)
        .where(payout_attempts.c.payout_id == row["payout_id"])
        .values(**values)
    )
    if changed.rowcount == 0:
        await conn.execute(
            payout_attempts.insert().values(
                payout_id=row["payout_id"],
                withdrawal_id=row["id"],
                provider=row["payout_provider"],
                attempt=row["payout_attempts"],
                created_at=now,
                **values,
            )
        )


async def _apply(
    ctx: WithdrawalContext, withdrawal_id: int, result: PayoutResult
) -> dict[str, Any]:
    async def work(tx: Tx) -> dict[str, Any]:
        conn = await tx.main()
        row = await load(conn, withdrawal_id)
        if row["status"] != "approved":
            return row  # someone else recorded the outcome first
        if result.state == "paid":
            return await complete_payout(tx, ctx, withdrawal_id, result.reference)
        if result.state == "failed":
            return await fail_payout(
                tx, ctx, withdrawal_id, result.failure_reason or "payout failed", result.reference
            )
        await _record_attempt(tx, row, "processing", result.reference, None)
        return row

    result_row: dict[str, Any] = await run_guarded(ctx.db, work)
    return result_row


async def dispatch_payout(ctx: WithdrawalContext, withdrawal_id: int) -> dict[str, Any]:
    """Send an approved withdrawal to its provider (again, with the same payout id, if its
    outcome is unknown) and record the outcome. Manual payouts wait for finance."""
    async with ctx.db.read(may_lag=False) as conn:
        row = await load(conn, withdrawal_id)
        payee = await load_payee(conn, ctx.cipher, row["promoter_id"])
    if row["status"] != "approved" or row["payout_provider"] == "manual":
        return row
    provider = ctx.providers.get(row["payout_provider"])
    if provider is None:
        raise Conflict(
            f"payout provider {row['payout_provider']} is not configured",
            code="withdrawal.provider_unavailable",
        )
    destination = payee.destination(row["channel"]) if payee else None
    if payee is None or not destination:
        return await _apply(
            ctx,
            withdrawal_id,
            PayoutResult(state="failed", failure_reason="payee destination no longer on file"),
        )
    request = PayoutRequest(
        payout_id=row["payout_id"],
        withdrawal_id=withdrawal_id,
        promoter_id=row["promoter_id"],
        channel=row["channel"],
        amount=row["net_amount"],
        currency=row["currency"],
        destination=destination,
        real_name=payee.real_name,
        remark=f"佣金提现 {withdrawal_id}",
    )
    try:
        result = await provider.send(request)
    except PayoutUnknown as exc:
        unknown_reason = str(exc)

        async def note(tx: Tx) -> None:
            await _record_attempt(tx, row, "unknown", None, unknown_reason)
            # Shown to finance: why the withdrawal is still approved, and what to do.
            await (await tx.main()).execute(
                update(withdrawals)
                .where(and_(withdrawals.c.id == withdrawal_id, withdrawals.c.status == "approved"))
                .values(
                    reason=f"payout outcome unknown ({unknown_reason}); retry the payout"[:500],
                    updated_at=utcnow(),
                )
            )

        await ctx.db.run(note)
        async with ctx.db.read(may_lag=False) as conn:
            return await load(conn, withdrawal_id)
    return await _apply(ctx, withdrawal_id, result)


async def retry_payout(ctx: WithdrawalContext, withdrawal_id: int) -> dict[str, Any]:
    """Pay a withdrawal whose payout failed, under a new payout id; an approved one whose
    outcome is unknown is asked again under its current id. Never pays twice."""

    async def reopen(tx: Tx) -> None:
        conn = await tx.main()
        row = await load(conn, withdrawal_id)
        if row["status"] == "approved":
            return
        attempt = int(row["payout_attempts"]) + 1
        await transition(
            conn,
            withdrawal_id,
            ("failed",),
            {
                "status": "approved",
                "payout_id": payout_id_for(withdrawal_id, attempt),
                "payout_provider": ctx.provider_for(row["channel"]).name,
                "payout_attempts": attempt,
                "reason": None,
                "updated_at": utcnow(),
            },
            "withdrawal.not_retryable",
        )

    await ctx.db.run(reopen)
    return await dispatch_payout(ctx, withdrawal_id)


async def mark_paid(
    tx: Tx, ctx: WithdrawalContext, withdrawal_id: int, voucher_reference: str
) -> dict[str, Any]:
    """Finance confirms a manual payout with the bank's voucher reference."""
    row = await load(await tx.main(), withdrawal_id)
    if row["payout_provider"] not in (None, "manual"):
        raise BadRequest(
            "only manual payouts are marked paid by hand", code="withdrawal.not_manual"
        )
    return await complete_payout(tx, ctx, withdrawal_id, voucher_reference)


async def mark_failed(
    tx: Tx, ctx: WithdrawalContext, withdrawal_id: int, reason: str
) -> dict[str, Any]:
    """Finance reports that a manual payout bounced (wrong card, closed account)."""
    row = await load(await tx.main(), withdrawal_id)
    if row["payout_provider"] not in (None, "manual"):
        raise BadRequest(
            "only manual payouts are marked failed by hand", code="withdrawal.not_manual"
        )
    return await fail_payout(tx, ctx, withdrawal_id, reason)


async def export_transfer_file(ctx: WithdrawalContext, channel: str | None) -> str:
    """The CSV finance uploads to the bank: approved withdrawals waiting for a manual payout."""
    conditions = [withdrawals.c.status == "approved", withdrawals.c.payout_provider == "manual"]
    if channel is not None:
        conditions.append(withdrawals.c.channel == channel)
    lines: list[TransferLine] = []
    async with ctx.db.read(may_lag=False) as conn:
        rows = [
            dict(r._mapping)
            for r in await conn.execute(
                select(withdrawals).where(and_(*conditions)).order_by(withdrawals.c.id)
            )
        ]
        for row in rows:
            payee = await load_payee(conn, ctx.cipher, row["promoter_id"])
            lines.append(
                TransferLine(
                    payout_id=row["payout_id"],
                    withdrawal_id=row["id"],
                    promoter_id=row["promoter_id"],
                    channel=row["channel"],
                    real_name=payee.real_name if payee else "",
                    destination=(payee.destination(row["channel"]) or "") if payee else "",
                    bank_name=(payee.bank_name or "") if payee else "",
                    net_amount=row["net_amount"],
                    currency=row["currency"],
                )
            )
    return transfer_file(lines)
