"""Requesting, cancelling and auditing withdrawals on a real database with the real ledger."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from libs.common.auth import Caller
from libs.common.db.engine import Tx
from libs.common.errors import TuikeError
from libs.common.messaging.outbox import outbox
from services.commission.compliance import CommissionSettings
from services.commission.ledger import PLATFORM_EXPENSE, Transfer, post_transfers, promoter_account
from services.commission.models import accounts
from services.commission.withdrawals import service
from services.commission.withdrawals.context import WithdrawalContext
from services.commission.withdrawals.withdrawals import WithdrawalRequest
from tests.withdrawals.conftest import Settings, new_promoter

YUAN = 100
FINANCE = Caller(subject="finance-1", roles=frozenset({"finance"}))


def as_promoter(promoter_id: int) -> Caller:
    return Caller(subject=str(promoter_id), roles=frozenset({"promoter"}), user_id=promoter_id)


async def balances(ctx: WithdrawalContext, promoter_id: int) -> dict[str, int]:
    async with ctx.db.read(may_lag=False) as conn:
        table = accounts.for_id(promoter_id)
        row = (await conn.execute(select(table).where(table.c.promoter_id == promoter_id))).one()
    return {b: int(row._mapping[f"{b}_amount"]) for b in ("available", "withdrawing", "paid_out")}


async def withdraw(
    ctx: WithdrawalContext, promoter_id: int, amount: int, channel: str = "bank", key: str = "k1"
) -> dict[str, Any]:
    row, _ = await service.request(ctx, WithdrawalRequest(promoter_id, amount, channel, key))
    return row


async def refusal(coro: Any) -> TuikeError:
    with pytest.raises(TuikeError) as caught:
        await coro
    return caught.value


async def events(ctx: WithdrawalContext, promoter_id: int) -> list[tuple[str, dict[str, Any]]]:
    """The withdrawal events of one promoter (keyed by the promoter), in outbox order."""
    async with ctx.db.read(may_lag=False) as conn:
        rows = await conn.execute(
            select(outbox.c.payload)
            .where(outbox.c.event_key == str(promoter_id))
            .order_by(outbox.c.seq)
        )
        found = [orjson.loads(r[0]) for r in rows]
    return [(e["type"], e["data"]) for e in found if e["type"].startswith("withdrawal.")]


async def test_request_takes_fee_and_tax_and_moves_available_to_withdrawing(
    wctx: WithdrawalContext, settings: Settings
) -> None:
    settings.value = CommissionSettings(withdraw_fee_bps=100)
    promoter = await new_promoter(wctx, 5_000 * YUAN)
    row = await withdraw(wctx, promoter, 3_000 * YUAN)
    # fee 1% of 3,000 = 30; tax on 3,000 = (3,000 − 800) × 20% = 440; net 2,530.
    assert (row["fee_amount"], row["tax_amount"], row["net_amount"]) == (3_000, 44_000, 253_000)
    assert row["status"] == "pending"
    assert await balances(wctx, promoter) == {
        "available": 2_000 * YUAN,
        "withdrawing": 3_000 * YUAN,
        "paid_out": 0,
    }
    assert [t for t, _ in await events(wctx, promoter)] == ["withdrawal.requested"]


async def test_same_idempotency_key_returns_the_first_withdrawal(wctx: WithdrawalContext) -> None:
    promoter = await new_promoter(wctx, 500 * YUAN)
    first, created = await service.request(
        wctx, WithdrawalRequest(promoter, 100 * YUAN, "bank", "a")
    )
    again, created_again = await service.request(
        wctx, WithdrawalRequest(promoter, 100 * YUAN, "bank", "a")
    )
    assert (created, created_again) == (True, False)
    assert again["id"] == first["id"]
    assert (await balances(wctx, promoter))["withdrawing"] == 100 * YUAN
    error = await refusal(withdraw(wctx, promoter, 200 * YUAN, key="a"))
    assert (error.status, error.code) == (409, "withdrawal.idempotency_key_reused")


async def test_refusals_write_nothing(wctx: WithdrawalContext, settings: Settings) -> None:
    settings.value = CommissionSettings(
        withdraw_min_amount=10 * YUAN, withdraw_daily_limit_amount=300 * YUAN
    )
    promoter = await new_promoter(wctx, 1_000 * YUAN)
    cases = [
        (withdraw(wctx, promoter, 9 * YUAN), 400, "withdrawal.below_minimum"),
        (
            withdraw(wctx, promoter, 50 * YUAN, channel="paypal"),
            400,
            "withdrawal.channel_not_allowed",
        ),
        (withdraw(wctx, promoter, 301 * YUAN), 409, "withdrawal.daily_limit_exceeded"),
        (withdraw(wctx, 12345, 50 * YUAN), 409, "withdrawal.payee_missing"),
    ]
    for coro, status, code in cases:
        error = await refusal(coro)
        assert (error.status, error.code) == (status, code)
    only_id = await new_promoter(wctx, 1_000 * YUAN, full_payee=False)
    error = await refusal(withdraw(wctx, only_id, 50 * YUAN, channel="wechat"))
    assert (error.code, error.details) == ("withdrawal.destination_missing", {"channel": "wechat"})
    # the manual channel needs only a payee on file
    assert (await withdraw(wctx, only_id, 50 * YUAN, channel="manual"))["status"] == "pending"
    assert await balances(wctx, promoter) == {
        "available": 1_000 * YUAN,
        "withdrawing": 0,
        "paid_out": 0,
    }

    # the daily limit counts the day's earlier withdrawals
    await withdraw(wctx, promoter, 200 * YUAN, key="d1")
    error = await refusal(withdraw(wctx, promoter, 101 * YUAN, key="d2"))
    assert error.code == "withdrawal.daily_limit_exceeded"
    assert error.details["remaining_amount"] == 100 * YUAN


async def test_balance_must_cover_the_amount(wctx: WithdrawalContext) -> None:
    promoter = await new_promoter(wctx, 100 * YUAN)
    error = await refusal(withdraw(wctx, promoter, 100 * YUAN + 1))
    assert (error.status, error.code) == (409, "withdrawal.insufficient_balance")
    assert error.details == {"available_amount": 100 * YUAN}


async def test_currency_must_be_the_accounts(wctx: WithdrawalContext) -> None:
    promoter = await new_promoter(wctx, 100 * YUAN)
    error = await refusal(
        service.request(wctx, WithdrawalRequest(promoter, 50 * YUAN, "bank", "usd", "USD"))
    )
    assert (error.status, error.code, error.details) == (
        400,
        "withdrawal.currency_mismatch",
        {"currency": "CNY"},
    )


async def test_negative_balance_after_a_clawback_blocks_withdrawals(
    wctx: WithdrawalContext,
) -> None:
    promoter = await new_promoter(wctx, 100 * YUAN)

    async def clawback(tx: Tx) -> None:
        await post_transfers(
            tx,
            wctx.ids,
            wctx.tables,
            [
                Transfer(
                    kind="reverse",
                    key=f"test-clawback:{promoter}",
                    debit=promoter_account(promoter, "available"),
                    credit=PLATFORM_EXPENSE,
                    amount=150 * YUAN,
                    currency="CNY",
                )
            ],
        )

    await wctx.db.run(clawback)
    error = await refusal(withdraw(wctx, promoter, 1 * YUAN))
    assert error.code == "withdrawal.insufficient_balance"
    assert error.details == {"available_amount": -50 * YUAN}


async def test_fee_and_tax_leaving_nothing_is_refused(
    wctx: WithdrawalContext, settings: Settings
) -> None:
    settings.value = CommissionSettings(withdraw_fee_bps=10_000)
    promoter = await new_promoter(wctx, 100 * YUAN)
    error = await refusal(withdraw(wctx, promoter, 100 * YUAN))
    assert (error.status, error.code) == (400, "withdrawal.amount_too_small")


async def test_no_withholding_when_switched_off(
    wctx: WithdrawalContext, settings: Settings
) -> None:
    settings.value = CommissionSettings(tax_withholding="none")
    promoter = await new_promoter(wctx, 5_000 * YUAN)
    row = await withdraw(wctx, promoter, 3_000 * YUAN)
    assert (row["tax_amount"], row["net_amount"]) == (0, 3_000 * YUAN)


async def test_global_profile_turns_withholding_off_unless_set(
    wctx: WithdrawalContext, settings: Settings
) -> None:
    settings.value = CommissionSettings(compliance_profile="global")
    promoter = await new_promoter(wctx, 5_000 * YUAN)
    assert (await withdraw(wctx, promoter, 3_000 * YUAN))["tax_amount"] == 0


async def test_two_withdrawals_in_a_month_and_a_rejection_recomputes(
    wctx: WithdrawalContext,
) -> None:
    promoter = await new_promoter(wctx, 10_000 * YUAN)
    first = await withdraw(wctx, promoter, 3_000 * YUAN, key="m1")
    second = await withdraw(wctx, promoter, 2_000 * YUAN, key="m2")
    assert (first["tax_amount"], second["tax_amount"]) == (440 * YUAN, 360 * YUAN)
    assert second["net_amount"] == 1_640 * YUAN

    rejected = await service.reject(wctx, first["id"], "ID photo unreadable", FINANCE)
    assert (rejected["status"], rejected["reason"]) == ("rejected", "ID photo unreadable")
    # the second alone: (2,000 − 800) × 20% = 240
    again = await service.get(wctx, second["id"])
    assert (again["tax_amount"], again["net_amount"]) == (240 * YUAN, 1_760 * YUAN)
    assert await balances(wctx, promoter) == {
        "available": 8_000 * YUAN,
        "withdrawing": 2_000 * YUAN,
        "paid_out": 0,
    }
    types = [t for t, _ in await events(wctx, promoter)]
    assert types.count("withdrawal.rejected") == 1
    assert "withdrawal.tax_recomputed" in types
    error = await refusal(service.reject(wctx, first["id"], "again", FINANCE))
    assert (error.status, error.code) == (409, "withdrawal.not_rejectable")


async def test_promoter_cancels_a_pending_withdrawal(wctx: WithdrawalContext) -> None:
    promoter = await new_promoter(wctx, 500 * YUAN)
    row = await withdraw(wctx, promoter, 300 * YUAN)
    cancelled = await service.cancel(wctx, row["id"], as_promoter(promoter))
    assert cancelled["status"] == "cancelled"
    assert (await balances(wctx, promoter))["available"] == 500 * YUAN
    error = await refusal(service.cancel(wctx, row["id"], as_promoter(promoter)))
    assert (error.status, error.code) == (409, "withdrawal.not_cancellable")
    # a cancelled withdrawal no longer counts: the same amount can be asked again
    assert (await withdraw(wctx, promoter, 500 * YUAN, key="k2"))["tax_amount"] == 0


async def test_approved_cannot_be_cancelled_nor_approved_twice(wctx: WithdrawalContext) -> None:
    promoter = await new_promoter(wctx, 500 * YUAN)
    row = await withdraw(wctx, promoter, 300 * YUAN)
    approved = await service.approve(wctx, row["id"], FINANCE)
    assert (approved["status"], approved["payout_provider"]) == ("approved", "manual")
    assert approved["payout_id"] == f"W{row['id']}A1" and len(approved["payout_id"]) <= 32
    assert (
        await refusal(service.cancel(wctx, row["id"], as_promoter(promoter)))
    ).code == "withdrawal.not_cancellable"
    error = await refusal(service.approve(wctx, row["id"], FINANCE))
    assert (error.status, error.code) == (409, "withdrawal.not_approvable")


async def test_only_its_promoter_cancels_and_reads_a_withdrawal(wctx: WithdrawalContext) -> None:
    promoter = await new_promoter(wctx, 500 * YUAN)
    other = await new_promoter(wctx)
    row = await withdraw(wctx, promoter, 300 * YUAN)
    for attempt in (
        service.cancel(wctx, row["id"], as_promoter(other)),
        service.get(wctx, row["id"], as_promoter(other)),
    ):
        error = await refusal(attempt)
        assert (error.status, error.code) == (403, "auth.forbidden")
    assert (await service.get(wctx, row["id"], as_promoter(promoter)))["status"] == "pending"
    assert (await service.get(wctx, row["id"], FINANCE))["status"] == "pending"
    # finance audits but does not cancel on the promoter's behalf
    assert (await refusal(service.cancel(wctx, row["id"], FINANCE))).status == 403


async def test_unknown_withdrawal_is_404(wctx: WithdrawalContext) -> None:
    error = await refusal(service.get(wctx, 42))
    assert (error.status, error.code) == (404, "withdrawal.not_found")


async def test_audit_queue_lists_by_status(wctx: WithdrawalContext) -> None:
    promoter = await new_promoter(wctx, 1_000 * YUAN)
    a = await withdraw(wctx, promoter, 100 * YUAN, key="q1")
    b = await withdraw(wctx, promoter, 100 * YUAN, key="q2")
    await service.approve(wctx, a["id"], FINANCE)
    pending, _ = await service.search(
        wctx, status="pending", promoter_id=None, before_id=None, limit=200
    )
    assert b["id"] in {r["id"] for r in pending} and a["id"] not in {r["id"] for r in pending}
    assert {r["status"] for r in pending} == {"pending"}
    mine, _ = await service.search(
        wctx, status="pending", promoter_id=promoter, before_id=None, limit=50
    )
    assert [r["id"] for r in mine] == [b["id"]]
    page, cursor = await service.search(
        wctx, status=None, promoter_id=promoter, before_id=None, limit=1
    )
    assert [r["id"] for r in page] == [b["id"]] and cursor == b["id"]
    rest, end = await service.search(
        wctx, status=None, promoter_id=promoter, before_id=cursor, limit=1
    )
    assert [r["id"] for r in rest] == [a["id"]] and end is None
    error = await refusal(
        service.search(wctx, status="lost", promoter_id=None, before_id=None, limit=5)
    )
    assert error.code == "withdrawal.bad_status"


async def test_100_concurrent_withdrawals_never_overdraw(wctx: WithdrawalContext) -> None:
    """A balance that covers 10 withdrawals, 100 asked at once: exactly 10 succeed."""
    promoter = await new_promoter(wctx, 1_000 * YUAN)

    async def one(index: int) -> str:
        try:
            await withdraw(wctx, promoter, 100 * YUAN, key=f"c{index}")
            return "ok"
        except TuikeError as error:
            return error.code

    outcomes = await asyncio.gather(*(one(i) for i in range(100)))
    assert outcomes.count("ok") == 10
    assert set(outcomes) == {"ok", "withdrawal.insufficient_balance"}
    assert await balances(wctx, promoter) == {
        "available": 0,
        "withdrawing": 1_000 * YUAN,
        "paid_out": 0,
    }
    rows, _ = await service.search(
        wctx, status="pending", promoter_id=promoter, before_id=None, limit=200
    )
    assert len(rows) == 10
    # the month's tax was decided serially: 10 × 100 = 1,000 yuan → (1,000 − 800) × 20% = 40
    assert sum(r["tax_amount"] for r in rows) == 40 * YUAN


async def test_audit_races_have_one_winner(wctx: WithdrawalContext) -> None:
    """Approve against cancel, and two finance clerks marking one payout paid at once."""
    promoter = await new_promoter(wctx, 1_000 * YUAN)
    row = await withdraw(wctx, promoter, 400 * YUAN)

    async def attempt(coro: Any) -> str:
        try:
            return str((await coro)["status"])
        except TuikeError as error:
            return error.code

    outcomes = await asyncio.gather(
        attempt(service.approve(wctx, row["id"], FINANCE)),
        attempt(service.cancel(wctx, row["id"], as_promoter(promoter))),
    )
    assert sorted(outcomes) in (
        ["approved", "withdrawal.not_cancellable"],
        ["cancelled", "withdrawal.not_approvable"],
    )
    if "approved" in outcomes:
        paid = await asyncio.gather(
            attempt(service.mark_paid(wctx, row["id"], "V-a", FINANCE)),
            attempt(service.mark_paid(wctx, row["id"], "V-b", FINANCE)),
        )
        assert sorted(paid) == ["paid", "withdrawal.not_payable"]
        expected = {"available": 600 * YUAN, "withdrawing": 0, "paid_out": 400 * YUAN}
    else:
        expected = {"available": 1_000 * YUAN, "withdrawing": 0, "paid_out": 0}
    assert await balances(wctx, promoter) == expected
