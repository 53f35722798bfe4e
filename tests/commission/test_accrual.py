"""Worked examples to the fen: rates, caps, fixed amounts × quantity, scope overrides,
versions, disabled uplines, exactly-once accrual."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.commission.ledger import verify
from tests.commission.helpers import Commission, fresh_id, item, paid_order


async def test_rate_per_level_floors_to_the_fen(commission: Commission) -> None:
    await commission.rule(
        "default", [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}]
    )
    parent, grandparent = fresh_id(), fresh_id()
    order = paid_order([parent, grandparent], [item(12_345)])
    assert await commission.pay(order) == [order.order_id]
    records = await commission.records(order)
    assert [(r["level"], r["beneficiary_id"], r["amount"], r["status"]) for r in records] == [
        (1, parent, 1_234, "frozen"),  # floor(12345 × 10%) = 1234.5 → 1234
        (2, grandparent, 617, "frozen"),  # floor(617.25)
    ]
    assert all(r["base_amount"] == 12_345 for r in records)
    assert (await commission.balances(parent))["frozen_amount"] == 1_234
    assert (await commission.balances(grandparent))["frozen_amount"] == 617
    assert (await commission.balances(parent))["available_amount"] == 0


async def test_cap_limits_a_line_to_min_not_minus(commission: Commission) -> None:
    await commission.rule("default", [{"level": 1, "rate_bps": 2000, "cap_amount": 1_500}])
    parent = fresh_id()
    order = paid_order([parent], [item(10_000), item(5_000)])
    await commission.pay(order)
    # 20% of 100.00 = 20.00 capped to 15.00; 20% of 50.00 = 10.00 under the cap.
    assert sorted(r["amount"] for r in await commission.records(order)) == [1_000, 1_500]


async def test_fixed_amount_is_per_unit_times_quantity(commission: Commission) -> None:
    await commission.rule("default", [{"level": 1, "fixed_amount": 150}])
    parent = fresh_id()
    order = paid_order([parent], [item(3_000, quantity=4)])
    await commission.pay(order)
    (record,) = await commission.records(order)
    assert record["amount"] == 600
    assert record["clamped"] is False or record["clamped"] == 0


async def test_fixed_amount_is_clamped_to_the_profile_cap(commission: Commission) -> None:
    # cn: all levels together ≤ 30% of the paid amount. 2 × 5.00 fixed on a 20.00 item → 6.00.
    await commission.rule(
        "default", [{"level": 1, "fixed_amount": 500}, {"level": 2, "fixed_amount": 300}]
    )
    parent, grandparent = fresh_id(), fresh_id()
    order = paid_order([parent, grandparent], [item(2_000, quantity=2)])
    await commission.pay(order)
    records = await commission.records(order)
    assert [(r["level"], r["amount"], bool(r["clamped"])) for r in records] == [
        (1, 600, True),
        (2, 0, True),
    ]


async def test_most_specific_scope_decides_all_levels(commission: Commission) -> None:
    await commission.rule(
        "default", [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}]
    )
    await commission.rule("category", [{"level": 1, "rate_bps": 2000}], key="books")
    await commission.rule(
        "product", [{"level": 1, "rate_bps": 300}, {"level": 2, "rate_bps": 100}], key="vip-sku"
    )
    parent, grandparent = fresh_id(), fresh_id()
    book = item(10_000, category="books")
    special = item(10_000, category="books", sku="vip-sku")
    other = item(10_000, category="toys")
    order = paid_order([parent, grandparent], [book, special, other])
    await commission.pay(order)
    amounts = await commission.amounts(order)
    assert amounts == {
        (book.item_id, 1): 2_000,  # category rule: level 1 only, no mixing with default
        (special.item_id, 1): 300,
        (special.item_id, 2): 100,
        (other.item_id, 1): 1_000,
        (other.item_id, 2): 500,
    }


async def test_order_uses_the_rule_version_in_force_when_paid(commission: Commission) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    first = await commission.rule(
        "default", [{"level": 1, "rate_bps": 1000}], effective_from=now - timedelta(days=10)
    )
    second = await commission.rule(
        "default", [{"level": 1, "rate_bps": 2000}], effective_from=now - timedelta(days=1)
    )
    parent = fresh_id()
    early = paid_order([parent], [item(10_000)], paid_at=datetime.now(UTC) - timedelta(days=5))
    late = paid_order([parent], [item(10_000)])
    await commission.pay(early, late)
    (early_record,) = await commission.records(early)
    (late_record,) = await commission.records(late)
    assert (early_record["amount"], early_record["rule_id"], early_record["rule_version"]) == (
        1_000,
        first.id,
        1,
    )
    assert (late_record["amount"], late_record["rule_id"], late_record["rule_version"]) == (
        2_000,
        second.id,
        2,
    )


async def test_no_rule_or_no_beneficiaries_earns_nothing(commission: Commission) -> None:
    parent = fresh_id()
    order = paid_order([parent], [item(10_000)])
    assert await commission.pay(order) == [order.order_id]
    assert await commission.records(order) == []
    await commission.rule("default", [{"level": 1, "rate_bps": 1000}])
    nobody = paid_order([], [item(10_000)])
    assert await commission.pay(nobody) == []
    assert await commission.records(nobody) == []


async def test_duplicate_deliveries_accrue_once(commission: Commission) -> None:
    await commission.rule(
        "default", [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}]
    )
    parent, grandparent = fresh_id(), fresh_id()
    order = paid_order([parent, grandparent], [item(10_000)])
    # The same event twice in one batch, then again later.
    assert await commission.pay(order, order) == [order.order_id]
    assert await commission.pay(order) == []
    assert len(await commission.records(order)) == 2
    assert (await commission.balances(parent))["frozen_amount"] == 1_000
    assert len(await commission.flows()) == 2
    report = await verify(commission.db, commission.ctx.tables)
    assert report.ok, report


async def test_disabled_upline_forfeits_by_default(commission: Commission) -> None:
    from services.commission.promoters import StatusChange, apply_status_changes

    await commission.rule(
        "default", [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}]
    )
    parent, grandparent = fresh_id(), fresh_id()
    change = StatusChange(parent, "disabled", None, datetime.now(UTC))
    await commission.run(lambda tx: apply_status_changes(tx, [change]))
    order = paid_order([parent, grandparent], [item(10_000)])
    await commission.pay(order)
    records = await commission.records(order)
    assert [(r["level"], r["beneficiary_id"], r["amount"], r["status"]) for r in records] == [
        (1, parent, 0, "void"),
        (2, grandparent, 500, "frozen"),
    ]
    assert (await commission.balances(parent))["frozen_amount"] == 0


async def test_disabled_upline_compresses_when_set(commission: Commission) -> None:
    from services.commission.promoters import StatusChange, apply_status_changes

    await commission.settings(disabled_ancestor_policy="compress")
    await commission.rule(
        "default", [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}]
    )
    parent, grandparent, great = fresh_id(), fresh_id(), fresh_id()
    change = StatusChange(parent, "disabled", None, datetime.now(UTC))
    await commission.run(lambda tx: apply_status_changes(tx, [change]))
    order = paid_order([parent, grandparent, great], [item(10_000)])
    await commission.pay(order)
    records = await commission.records(order)
    assert [(r["level"], r["beneficiary_id"], r["amount"]) for r in records] == [
        (1, grandparent, 1_000),
        (2, great, 500),
    ]


async def test_self_purchase_level_zero_only_when_enabled(commission: Commission) -> None:
    from services.commission.promoters import StatusChange, apply_status_changes

    await commission.rule(
        "default", [{"level": 0, "rate_bps": 300}, {"level": 1, "rate_bps": 1000}]
    )
    buyer, parent = fresh_id(), fresh_id()
    change = StatusChange(buyer, "approved", None, datetime.now(UTC))
    await commission.run(lambda tx: apply_status_changes(tx, [change]))
    off = paid_order([parent], [item(10_000)], buyer=buyer)
    await commission.pay(off)
    assert [r["level"] for r in await commission.records(off)] == [1]
    await commission.settings(self_purchase_enabled=True)
    on = paid_order([parent], [item(10_000)], buyer=buyer)
    await commission.pay(on)
    assert [
        (r["level"], r["beneficiary_id"], r["amount"]) for r in await commission.records(on)
    ] == [
        (0, buyer, 300),
        (1, parent, 1_000),
    ]


async def test_rate_by_the_earners_tier(commission: Commission) -> None:
    from services.commission.promoters import StatusChange, apply_status_changes
    from services.commission.rules import create_rule

    gold, plain = fresh_id(), fresh_id()
    change = StatusChange(gold, "approved", "gold", datetime.now(UTC))
    await commission.run(lambda tx: apply_status_changes(tx, [change]))
    await commission.rule(
        "default",
        [
            {"level": 1, "rate_bps": 1000, "tier_rates": {"gold": 1500}},
            {"level": 2, "rate_bps": 500},
        ],
    )
    mine = paid_order([gold, plain], [item(10_000)])
    theirs = paid_order([plain, gold], [item(10_000)])
    await commission.pay(mine, theirs)
    assert [(r["level"], r["rate_bps"], r["amount"]) for r in await commission.records(mine)] == [
        (1, 1500, 1_500),
        (2, 500, 500),
    ]
    assert [r["amount"] for r in await commission.records(theirs)] == [1_000, 500]
    # The highest tier rate counts against the profile's cap.
    from libs.common.errors import BadRequest
    from services.commission.compliance import LevelTerms

    too_rich = [LevelTerms(1, 1000, tier_rates={"gold": 2600}), LevelTerms(2, 500)]
    with pytest.raises(BadRequest) as refused:
        await commission.run(
            lambda tx: create_rule(tx, commission.ctx.ids, "default", None, too_rich)
        )
    assert refused.value.code == "compliance.total_rate_exceeded"
