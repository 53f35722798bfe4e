"""Completion, settlement and refunds, to the fen, with the ledger checked after each story."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.commission.ledger import verify
from tests.commission.helpers import Commission, fresh_id, item, paid_order, refund

LATER = datetime.now(UTC) + timedelta(days=30)


async def _verified(commission: Commission) -> None:
    report = await verify(commission.db, commission.ctx.tables)
    assert report.ok, report
    assert report.ledger_total == 0


async def test_partial_refunds_recompute_on_the_remaining_amount(commission: Commission) -> None:
    await commission.rule(
        "default", [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}]
    )
    parent, grandparent = fresh_id(), fresh_id()
    shirt, socks = item(10_000), item(2_999)
    order = paid_order([parent, grandparent], [shirt, socks])
    await commission.pay(order)
    assert (await commission.balances(parent))["frozen_amount"] == 1_000 + 299
    # First refund: 33.33 back on the shirt → 66.67 still paid.
    lines = await commission.refund(refund(order, fresh_id(), {shirt.item_id: 6_667}))
    assert sorted((line.level, line.amount) for line in lines) == [(1, 334), (2, 167)]
    amounts = await commission.amounts(order)
    assert amounts[(shirt.item_id, 1)] == 666  # floor(666.7)
    assert amounts[(shirt.item_id, 2)] == 333  # floor(333.35)
    assert amounts[(socks.item_id, 1)] == 299
    # The same refund delivered again changes nothing.
    again = refund(order, lines[0].record_id, {})
    assert again.items == []
    # Second refund on the shirt: 6.67 more back → 60.00 still paid.
    second = fresh_id()
    await commission.refund(refund(order, second, {shirt.item_id: 6_000}))
    await commission.refund(refund(order, second, {shirt.item_id: 6_000}))
    amounts = await commission.amounts(order)
    assert (amounts[(shirt.item_id, 1)], amounts[(shirt.item_id, 2)]) == (600, 300)
    assert (await commission.balances(parent))["frozen_amount"] == 600 + 299
    assert (await commission.balances(grandparent))["frozen_amount"] == 300 + 149
    await _verified(commission)


async def test_full_refund_leaves_exactly_zero(commission: Commission) -> None:
    await commission.rule("default", [{"level": 1, "rate_bps": 1000, "cap_amount": 700}])
    await commission.rule("category", [{"level": 1, "fixed_amount": 199}], key="digital")
    parent = fresh_id()
    a, b = item(9_999), item(5_000, category="digital", quantity=3)
    order = paid_order([parent], [a, b])
    await commission.pay(order)
    assert await commission.amounts(order) == {(a.item_id, 1): 700, (b.item_id, 1): 597}
    await commission.refund(refund(order, fresh_id(), {b.item_id: 2_500}))
    assert (await commission.amounts(order))[(b.item_id, 1)] == 298  # floor(597 × 1/2)
    await commission.refund(refund(order, fresh_id(), {a.item_id: 0, b.item_id: 0}))
    records = await commission.records(order)
    assert [(r["amount"], r["status"]) for r in records] == [(0, "reversed"), (0, "reversed")]
    assert await commission.balances(parent) == {
        "promoter_id": parent,
        "frozen_amount": 0,
        "available_amount": 0,
        "withdrawing_amount": 0,
        "paid_out_amount": 0,
        "currency": "CNY",
    }
    await _verified(commission)


async def test_settlement_waits_for_the_frozen_period(commission: Commission) -> None:
    await commission.settings(frozen_days=7)
    await commission.rule("default", [{"level": 1, "rate_bps": 1000}])
    parent = fresh_id()
    order = paid_order([parent], [item(10_000)])
    await commission.pay(order)
    # Not completed: never due.
    assert (await commission.settle(LATER)).orders == 0
    completed_at = datetime.now(UTC)
    assert await commission.complete(order, completed_at) == 1
    assert await commission.complete(order, completed_at + timedelta(days=1)) == 0
    (record,) = await commission.records(order)
    assert record["unfreeze_at"] == (completed_at + timedelta(days=7)).replace(tzinfo=None)
    assert (await commission.settle(completed_at + timedelta(days=6))).orders == 0
    result = await commission.settle(completed_at + timedelta(days=7))
    assert (result.orders, result.records, result.amount) == (1, 1, 1_000)
    assert (await commission.settle(LATER)).orders == 0
    (record,) = await commission.records(order)
    assert record["status"] == "settled"
    balances = await commission.balances(parent)
    assert (balances["frozen_amount"], balances["available_amount"]) == (0, 1_000)
    await _verified(commission)


async def test_refund_after_settlement_claws_back_below_zero(commission: Commission) -> None:
    await commission.settings(frozen_days=0)
    await commission.rule("default", [{"level": 1, "rate_bps": 1000}])
    parent = fresh_id()
    first = paid_order([parent], [item(10_000)])
    second_item = item(50_000)
    second = paid_order([parent], [second_item])
    await commission.pay(first, second)
    await commission.complete(second)
    await commission.settle(LATER)
    assert (await commission.balances(parent))["available_amount"] == 5_000
    # A partial refund after settlement takes it back from available.
    await commission.refund(refund(second, fresh_id(), {second_item.item_id: 20_000}))
    balances = await commission.balances(parent)
    assert (balances["frozen_amount"], balances["available_amount"]) == (1_000, 2_000)
    (record,) = await commission.records(second)
    assert (record["status"], record["amount"], record["reversed_amount"]) == (
        "settled",
        2_000,
        3_000,
    )
    await _verified(commission)


async def test_clawback_can_make_available_negative(commission: Commission) -> None:
    """Money already withdrawn cannot be taken back from available: the balance goes
    negative (issue 6 blocks withdrawals until earnings cover it)."""
    from services.commission.ledger import Transfer, post_transfers, promoter_account

    await commission.settings(frozen_days=0)
    await commission.rule("default", [{"level": 1, "rate_bps": 1000}])
    parent = fresh_id()
    sold = item(10_000)
    order = paid_order([parent], [sold])
    await commission.pay(order)
    await commission.complete(order)
    await commission.settle(LATER)
    # Withdrawal moves (issue 6 will own these): available → withdrawing → paid out.
    moves = [
        Transfer(
            "withdraw",
            "withdraw:t1",
            promoter_account(parent, "available"),
            promoter_account(parent, "withdrawing"),
            800,
            "CNY",
        ),
        Transfer(
            "payout",
            "payout:t1",
            promoter_account(parent, "withdrawing"),
            promoter_account(parent, "paid_out"),
            800,
            "CNY",
        ),
    ]
    await commission.run(
        lambda tx: post_transfers(tx, commission.ctx.ids, commission.ctx.tables, moves)
    )
    await commission.refund(refund(order, fresh_id(), {sold.item_id: 0}))
    balances = await commission.balances(parent)
    assert (balances["available_amount"], balances["paid_out_amount"]) == (-800, 800)
    (record,) = await commission.records(order)
    assert (record["status"], record["amount"]) == ("reversed", 0)
    await _verified(commission)


async def test_completion_before_payment_event_still_settles(commission: Commission) -> None:
    """order.paid waits for attribution; order.completed may arrive first."""
    await commission.settings(frozen_days=0)
    await commission.rule("default", [{"level": 1, "rate_bps": 1000}])
    parent = fresh_id()
    sold = item(10_000, refunded_amount=4_000)
    order = paid_order([parent], [sold])
    await commission.complete(order)
    assert (await commission.settle(LATER)).orders == 0  # nothing accrued yet
    await commission.pay(order)
    (record,) = await commission.records(order)
    assert (record["base_amount"], record["amount"]) == (6_000, 600)
    assert record["unfreeze_at"] is not None
    assert (await commission.settle(LATER)).amount == 600
    await _verified(commission)


async def test_a_refund_before_its_payment_is_applied_when_the_payment_comes(
    commission: Commission,
) -> None:
    """A broker that restarted empty can be sent a refund again before the relay republishes
    the order.paid ahead of it (the chaos test's seed 618029893). The refund waits and is
    applied by the accrual: balances, records and ledger as if the events had come in order,
    and the republished copies change nothing."""
    await commission.rule(
        "default", [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}]
    )
    in_order, out_of_order = [fresh_id(), fresh_id()], [fresh_id(), fresh_id()]
    outcomes = []
    for chain, refund_first in ((in_order, False), (out_of_order, True)):
        shirt, socks = item(24_613), item(11_946)
        order = paid_order(chain, [shirt, socks])
        first = refund(order, fresh_id(), {shirt.item_id: 22_228})
        second = refund(order, fresh_id(), {shirt.item_id: 20_000, socks.item_id: 0})
        if refund_first:
            assert await commission.refund(first) == []  # nothing to reverse yet
            assert await commission.refund(second) == []
            assert await commission.records(order) == []
            await commission.pay(order)
        else:
            await commission.pay(order)
            await commission.refund(first)
            await commission.refund(second)
        # The republish: every event of the order once more.
        assert await commission.pay(order) == []
        assert await commission.refund(first) == [] and await commission.refund(second) == []
        records = await commission.records(order)
        outcomes.append(
            (
                sorted(
                    (r["level"], r["base_amount"], r["amount"], r["reversed_amount"], r["status"])
                    for r in records
                ),
                [await commission.balances(promoter) for promoter in chain],
            )
        )
    (records_in_order, balances_in_order), (records_refund_first, balances_refund_first) = outcomes
    assert records_refund_first == records_in_order
    assert records_in_order == [
        (1, 0, 0, 1_194, "reversed"),
        (1, 20_000, 2_000, 461, "frozen"),
        (2, 0, 0, 597, "reversed"),
        (2, 20_000, 1_000, 230, "frozen"),
    ]
    strip = [{k: v for k, v in b.items() if k != "promoter_id"} for b in balances_in_order]
    assert [
        {k: v for k, v in b.items() if k != "promoter_id"} for b in balances_refund_first
    ] == strip
    assert [b["frozen_amount"] for b in balances_refund_first] == [2_000, 1_000]
    await _verified(commission)


async def test_refunds_that_wait_too_long_are_forgotten(commission: Commission) -> None:
    """Refunds of orders that earned nothing wait for an order.paid that accrues nothing:
    after REFUND_WAIT they go, a few at a time, as later refunds arrive."""
    from sqlalchemy import func, select

    from services.commission.models import commission_refunds_waiting
    from services.commission.refunds import REFUND_WAIT, apply_refunds

    await commission.rule("default", [{"level": 1, "rate_bps": 1000}])
    long_ago = datetime.now(UTC).replace(tzinfo=None) - REFUND_WAIT - timedelta(hours=1)
    old = [refund(paid_order([], [item(1_000)]), fresh_id(), {}) for _ in range(3)]
    await commission.run(lambda tx: apply_refunds(tx, commission.ctx, old, now=long_ago))

    async def waiting() -> int:
        async with commission.db.read(may_lag=False) as conn:
            return int(
                await conn.scalar(select(func.count()).select_from(commission_refunds_waiting))
            )

    assert await waiting() == 3
    recent = refund(paid_order([fresh_id()], [item(1_000)]), fresh_id(), {})
    await commission.refund(recent)
    assert await waiting() == 1  # the recent one, still waiting for its order.paid
