"""Withdrawal requests and their audit (ARCHITECTURE §6).

Money moves in the ledger of the commission service (services.commission.ledger): a request
moves the gross amount available → withdrawing, a rejection or cancellation moves it back,
a payout (payouts.py) splits it into paid_out, tax payable and fee income.

Never overdrawn, even under concurrent requests: the request takes the promoter's withdrawal
lock row first (serialising that promoter's requests, so the month's tax and the day's limit
are decided on what is committed), then a guarded update on the promoter's balance row
(``WHERE available_amount >= amount``) that both checks and locks the balance in the same
transaction as the ledger transfer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.engine import Tx
from libs.common.db.sql import upsert_add
from libs.common.errors import BadRequest, Conflict, NotFound
from libs.common.events import WithdrawalChanged
from libs.common.ids import shard_of
from libs.common.messaging.envelope import COMMISSION_EVENTS, make_event
from libs.common.messaging.outbox import publish, utcnow
from libs.common.money import apply_rate_floor
from services.commission.ledger import Transfer, post_transfers, promoter_account
from services.commission.models import accounts
from services.commission.withdrawals import tax
from services.commission.withdrawals.context import WithdrawalContext
from services.commission.withdrawals.models import (
    COUNTED_STATUSES,
    withdrawal_locks,
    withdrawals,
)
from services.commission.withdrawals.payee import require_destination
from services.commission.withdrawals.payouts import payout_id_for
from services.commission.withdrawals.settings import WithdrawalPolicy

MAX_PAGE = 200


@dataclass(frozen=True)
class WithdrawalRequest:
    promoter_id: int
    amount: int
    channel: str
    idempotency_key: str
    currency: str = "CNY"


async def lock_promoter(conn: AsyncConnection, promoter_id: int) -> None:
    """Take the promoter's withdrawal lock row for the rest of the transaction (MySQL holds
    the row lock of the upsert until commit; SQLite writers are serial already)."""
    await upsert_add(
        conn,
        withdrawal_locks,
        [{"promoter_id": promoter_id, "version": 1}],
        ["promoter_id"],
        ["version"],
    )


async def load(conn: AsyncConnection, withdrawal_id: int) -> dict[str, Any]:
    row = (await conn.execute(select(withdrawals).where(withdrawals.c.id == withdrawal_id))).first()
    if row is None:
        raise NotFound("no such withdrawal", code="withdrawal.not_found")
    return dict(row._mapping)


async def _by_key(conn: AsyncConnection, promoter_id: int, key: str) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            select(withdrawals).where(
                and_(withdrawals.c.promoter_id == promoter_id, withdrawals.c.idempotency_key == key)
            )
        )
    ).first()
    return None if row is None else dict(row._mapping)


def _replay(existing: dict[str, Any], request: WithdrawalRequest) -> dict[str, Any]:
    if existing["amount"] != request.amount or existing["channel"] != request.channel:
        raise Conflict(
            "this idempotency key was used for a different withdrawal",
            code="withdrawal.idempotency_key_reused",
            details={"withdrawal_id": str(existing["id"])},
        )
    return existing


async def publish_change(tx: Tx, row: dict[str, Any], event_type: str, fact: str) -> None:
    data = WithdrawalChanged(
        withdrawal_id=row["id"],
        promoter_id=row["promoter_id"],
        amount=row["amount"],
        fee_amount=row["fee_amount"],
        tax_amount=row["tax_amount"],
        net_amount=row["net_amount"],
        currency=row["currency"],
        status=row["status"],
        occurred_at=datetime.now(UTC),
    )
    await publish(
        tx,
        COMMISSION_EVENTS,
        make_event(
            event_type,
            fact,
            key=row["promoter_id"],
            data=data.model_dump(mode="json"),
            source="commission",
        ),
    )


async def _counted_sum(conn: AsyncConnection, *conditions: Any) -> tuple[int, int]:
    row = (
        await conn.execute(
            select(
                func.coalesce(func.sum(withdrawals.c.amount), 0),
                func.coalesce(func.sum(withdrawals.c.tax_amount), 0),
            ).where(and_(withdrawals.c.status.in_(COUNTED_STATUSES), *conditions))
        )
    ).one()
    return int(row[0]), int(row[1])


async def available_amount(tx: Tx, promoter_id: int) -> int:
    table = accounts.for_id(promoter_id)
    conn = await tx.shard(shard_of(promoter_id))
    found = await conn.scalar(
        select(table.c.available_amount).where(table.c.promoter_id == promoter_id)
    )
    return int(found or 0)


async def request_withdrawal(
    tx: Tx,
    ctx: WithdrawalContext,
    policy: WithdrawalPolicy,
    request: WithdrawalRequest,
    now: datetime | None = None,
) -> tuple[dict[str, Any], bool]:
    """Check the request and move its amount available → withdrawing; returns the withdrawal
    and whether it was created now (False: a replay of the same idempotency key).

    Refusals (nothing written): channel not offered, amount below the minimum, payee or the
    channel's destination missing, daily limit exceeded, fee and tax leaving nothing, and an
    available balance that does not cover the amount (which also covers a negative balance
    after a clawback)."""
    conn = await tx.main()
    existing = await _by_key(conn, request.promoter_id, request.idempotency_key)
    if existing is not None:
        return _replay(existing, request), False
    if request.channel not in policy.channels:
        raise BadRequest(
            f"channel {request.channel} is not offered",
            code="withdrawal.channel_not_allowed",
            details={"channels": list(policy.channels)},
        )
    if request.amount < policy.min_amount:
        raise BadRequest(
            "the amount is below the minimum withdrawal",
            code="withdrawal.below_minimum",
            details={"min_amount": policy.min_amount},
        )
    await require_destination(conn, ctx.cipher, request.promoter_id, request.channel)

    await lock_promoter(conn, request.promoter_id)
    # Under the lock: a concurrent request with the same key has committed by now.
    existing = await _by_key(conn, request.promoter_id, request.idempotency_key)
    if existing is not None:
        return _replay(existing, request), False

    now = now or utcnow()
    local = now.replace(tzinfo=UTC).astimezone(ctx.zone)
    day, month = local.strftime("%Y%m%d"), local.strftime("%Y%m")
    if policy.daily_limit_amount > 0:
        today, _ = await _counted_sum(
            conn,
            withdrawals.c.promoter_id == request.promoter_id,
            withdrawals.c.business_day == day,
        )
        if today + request.amount > policy.daily_limit_amount:
            raise Conflict(
                "the daily withdrawal limit would be exceeded",
                code="withdrawal.daily_limit_exceeded",
                details={
                    "daily_limit_amount": policy.daily_limit_amount,
                    "remaining_amount": max(policy.daily_limit_amount - today, 0),
                },
            )

    fee_amount = apply_rate_floor(request.amount, policy.fee_bps)
    tax_amount = 0
    if policy.tax_withholding == "cn_labor":
        income_before, withheld_before = await _counted_sum(
            conn,
            withdrawals.c.promoter_id == request.promoter_id,
            withdrawals.c.tax_month == month,
            withdrawals.c.tax_withholding == "cn_labor",
        )
        tax_amount = tax.withholding(income_before, withheld_before, request.amount)
    net_amount = request.amount - fee_amount - tax_amount
    if net_amount <= 0:
        raise BadRequest(
            "fee and tax would leave nothing to pay out",
            code="withdrawal.amount_too_small",
            details={"fee_amount": fee_amount, "tax_amount": tax_amount},
        )

    account = accounts.for_id(request.promoter_id)
    shard_conn = await tx.shard(shard_of(request.promoter_id))
    account_currency = await shard_conn.scalar(
        select(account.c.currency).where(account.c.promoter_id == request.promoter_id)
    )
    if account_currency is not None and account_currency != request.currency:
        raise BadRequest(
            f"the account is kept in {account_currency}",
            code="withdrawal.currency_mismatch",
            details={"currency": account_currency},
        )
    # The guard: checks and locks the balance row in this transaction; the ledger transfer
    # below moves it while we hold the lock, so two requests can never both spend it.
    guarded = await shard_conn.execute(
        update(account)
        .where(
            and_(
                account.c.promoter_id == request.promoter_id,
                account.c.available_amount >= request.amount,
            )
        )
        .values(updated_at=now)
    )
    if guarded.rowcount != 1:
        raise Conflict(
            "the available balance does not cover this withdrawal",
            code="withdrawal.insufficient_balance",
            details={"available_amount": await available_amount(tx, request.promoter_id)},
        )

    withdrawal_id = ctx.ids.next_id_for(request.promoter_id)
    row: dict[str, Any] = {
        "id": withdrawal_id,
        "promoter_id": request.promoter_id,
        "idempotency_key": request.idempotency_key,
        "channel": request.channel,
        "currency": request.currency,
        "amount": request.amount,
        "fee_bps": policy.fee_bps,
        "fee_amount": fee_amount,
        "tax_amount": tax_amount,
        "net_amount": net_amount,
        "tax_withholding": policy.tax_withholding,
        "tax_month": month,
        "business_day": day,
        "status": "pending",
        "reason": None,
        "audited_by": None,
        "payout_id": None,
        "payout_provider": None,
        "payout_attempts": 0,
        "payout_reference": None,
        "requested_at": now,
        "audited_at": None,
        "paid_at": None,
        "updated_at": now,
    }
    await conn.execute(withdrawals.insert().values(**row))
    await post_transfers(
        tx,
        ctx.ids,
        ctx.tables,
        [
            Transfer(
                kind="withdraw",
                key=f"withdraw:{withdrawal_id}",
                debit=promoter_account(request.promoter_id, "available"),
                credit=promoter_account(request.promoter_id, "withdrawing"),
                amount=request.amount,
                currency=request.currency,
            )
        ],
        now=now,
    )
    await publish_change(tx, row, "withdrawal.requested", str(withdrawal_id))
    return row, True


async def transition(
    conn: AsyncConnection,
    withdrawal_id: int,
    allowed: tuple[str, ...],
    values: dict[str, Any],
    refusal_code: str,
) -> dict[str, Any]:
    """A guarded status change: only from ``allowed`` statuses, so two audits never both win."""
    before = await load(conn, withdrawal_id)
    result = await conn.execute(
        update(withdrawals)
        .where(and_(withdrawals.c.id == withdrawal_id, withdrawals.c.status.in_(allowed)))
        .values(**values)
    )
    if result.rowcount != 1:
        current = await load(conn, withdrawal_id)
        raise Conflict(
            f"the withdrawal is {current['status']}",
            code=refusal_code,
            details={"status": current["status"]},
        )
    return before


async def recompute_month_tax(
    conn: AsyncConnection, promoter_id: int, month: str
) -> list[dict[str, Any]]:
    """After a rejection or cancellation: pending withdrawals of the month withhold the
    month-to-date difference again; approved, failed and paid ones keep their tax (their
    net amount may already be at a provider). Returns the rows whose tax changed."""
    rows = [
        dict(r._mapping)
        for r in await conn.execute(
            select(withdrawals)
            .where(
                and_(
                    withdrawals.c.promoter_id == promoter_id,
                    withdrawals.c.tax_month == month,
                    withdrawals.c.tax_withholding == "cn_labor",
                    withdrawals.c.status.in_(COUNTED_STATUSES),
                )
            )
            .order_by(withdrawals.c.requested_at, withdrawals.c.id)
        )
    ]
    payments = [
        tax.MonthPayment(r["amount"], None if r["status"] == "pending" else r["tax_amount"])
        for r in rows
    ]
    changed = []
    for row, new_tax in zip(rows, tax.reallocate(payments), strict=True):
        if new_tax == row["tax_amount"]:
            continue
        net = row["amount"] - row["fee_amount"] - new_tax
        await conn.execute(
            update(withdrawals)
            .where(and_(withdrawals.c.id == row["id"], withdrawals.c.status == "pending"))
            .values(tax_amount=new_tax, net_amount=net, updated_at=utcnow())
        )
        changed.append({**row, "tax_amount": new_tax, "net_amount": net})
    return changed


async def _return_to_available(
    tx: Tx, ctx: WithdrawalContext, row: dict[str, Any], now: datetime
) -> None:
    await post_transfers(
        tx,
        ctx.ids,
        ctx.tables,
        [
            Transfer(
                kind="withdraw_return",
                key=f"withdraw-return:{row['id']}",
                debit=promoter_account(row["promoter_id"], "withdrawing"),
                credit=promoter_account(row["promoter_id"], "available"),
                amount=row["amount"],
                currency=row["currency"],
            )
        ],
        now=now,
    )


async def _close(
    tx: Tx,
    ctx: WithdrawalContext,
    withdrawal_id: int,
    status: str,
    allowed: tuple[str, ...],
    reason: str | None,
    auditor: str | None,
    refusal_code: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    conn = await tx.main()
    current = await load(conn, withdrawal_id)
    await lock_promoter(conn, current["promoter_id"])
    now = utcnow()
    values: dict[str, Any] = {"status": status, "reason": reason, "updated_at": now}
    if auditor is not None:
        values.update(audited_by=auditor, audited_at=now)
    before = await transition(conn, withdrawal_id, allowed, values, refusal_code)
    await _return_to_available(tx, ctx, before, now)
    for changed in await recompute_month_tax(conn, before["promoter_id"], before["tax_month"]):
        await publish_change(
            tx, changed, "withdrawal.tax_recomputed", f"{changed['id']}:{withdrawal_id}"
        )
    after = await load(conn, withdrawal_id)
    await publish_change(tx, after, f"withdrawal.{status}", str(withdrawal_id))
    return before, after


async def cancel_withdrawal(tx: Tx, ctx: WithdrawalContext, withdrawal_id: int) -> dict[str, Any]:
    """The promoter takes back a withdrawal nobody has audited yet."""
    _, after = await _close(
        tx, ctx, withdrawal_id, "cancelled", ("pending",), None, None, "withdrawal.not_cancellable"
    )
    return after


async def reject_withdrawal(
    tx: Tx, ctx: WithdrawalContext, withdrawal_id: int, reason: str, auditor: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Refuse a pending withdrawal (or give up on one whose payout failed): the money goes
    back to available and the month's tax is recomputed."""
    return await _close(
        tx,
        ctx,
        withdrawal_id,
        "rejected",
        ("pending", "failed"),
        reason,
        auditor,
        "withdrawal.not_rejectable",
    )


async def approve_withdrawal(
    tx: Tx, ctx: WithdrawalContext, withdrawal_id: int, auditor: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Approve a pending withdrawal and give it its first payout id."""
    conn = await tx.main()
    current = await load(conn, withdrawal_id)
    now = utcnow()
    before = await transition(
        conn,
        withdrawal_id,
        ("pending",),
        {
            "status": "approved",
            "audited_by": auditor,
            "audited_at": now,
            "payout_id": payout_id_for(withdrawal_id, 1),
            "payout_provider": ctx.provider_for(current["channel"]).name,
            "payout_attempts": 1,
            "updated_at": now,
        },
        "withdrawal.not_approvable",
    )
    after = await load(conn, withdrawal_id)
    await publish_change(tx, after, "withdrawal.approved", str(withdrawal_id))
    return before, after


async def list_withdrawals(
    conn: AsyncConnection,
    *,
    status: str | None,
    promoter_id: int | None,
    before_id: int | None,
    limit: int,
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first; ``before_id`` is the cursor of the next page."""
    conditions = []
    if status is not None:
        conditions.append(withdrawals.c.status == status)
    if promoter_id is not None:
        conditions.append(withdrawals.c.promoter_id == promoter_id)
    if before_id is not None:
        conditions.append(withdrawals.c.id < before_id)
    limit = max(1, min(limit, MAX_PAGE))
    rows = [
        dict(r._mapping)
        for r in await conn.execute(
            select(withdrawals)
            .where(*conditions)
            .order_by(withdrawals.c.id.desc())
            .limit(limit + 1)
        )
    ]
    next_cursor = rows[limit - 1]["id"] if len(rows) > limit else None
    return rows[:limit], next_cursor
