"""Batched settlement (docs/decisions/0304): one guarded UPDATE per batch, one ledger transfer
per promoter per batch, and every guarantee of the per-record way still holds."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import inspect, select, text

from libs.common.db.engine import Database, Tx
from libs.common.db.migrations import migrate
from libs.common.events import CommissionsChanged, OrderCompleted
from libs.common.messaging.envelope import COMMISSION_EVENTS
from libs.common.messaging.outbox import outbox
from services.commission.ledger import verify
from services.commission.migrations import MIGRATIONS
from services.commission.models import settle_batches
from services.commission.review import change_hold
from services.commission.settlement import (
    complete_orders,
    json_moment,
    settle_due_now,
    settle_orders,
    settled_event_data,
)
from tests.commission.helpers import Commission, fresh_id, item, paid_order, refund

LATER = datetime.now(UTC) + timedelta(days=30)


class Crash(Exception):
    """The process died before the transaction committed."""


async def _verified(commission: Commission) -> None:
    report = await verify(commission.db, commission.ctx.tables)
    assert report.ok, report
    assert report.ledger_total == 0
    assert report.settlement_mismatches == []


async def _settle_flows(commission: Commission) -> list[dict[str, Any]]:
    return [f for f in await commission.flows() if f["kind"] == "settle"]


async def _due_orders(commission: Commission, promoters: list[int], count: int) -> list[Any]:
    """``count`` completed orders of one item over 2-level chains drawn from ``promoters``,
    with varied paid amounts."""
    orders = []
    for n in range(count):
        size = len(promoters)
        # The upline differs from the parent and varies with each round over the pool.
        chain = [promoters[n % size], promoters[(n + 1 + (n // size) % (size - 1)) % size]]
        orders.append(paid_order(chain, [item(1_000 + (n * 37) % 9_000)]))
    done = [OrderCompleted(order_id=o.order_id, completed_at=datetime.now(UTC)) for o in orders]
    for start in range(0, len(orders), 250):
        await commission.pay(*orders[start : start + 250])
        part = done[start : start + 250]
        await commission.run(lambda tx, part=part: complete_orders(tx, commission.ctx, part))  # type: ignore[misc]
    return orders


def _expected_by_promoter(orders: list[Any], rates: tuple[int, ...]) -> dict[int, int]:
    """What each promoter earns by the rule: floor(paid × rate / 10000) per line."""
    expected: dict[int, int] = defaultdict(int)
    for order in orders:
        for beneficiary in order.beneficiaries:
            for sold in order.items:
                expected[beneficiary.user_id] += (
                    sold.paid_amount * rates[beneficiary.level - 1] // 10_000
                )
    return expected


async def test_a_large_batch_settles_to_the_fen_and_only_once(commission: Commission) -> None:
    await commission.settings(frozen_days=0)
    await commission.rule(
        "default", [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 333}]
    )
    promoters = [fresh_id() for _ in range(9)]
    orders = await _due_orders(commission, promoters, 1_050)
    expected = _expected_by_promoter(orders, (1000, 333))
    records = sum(len(order.beneficiaries) for order in orders)
    assert records >= 2_000

    result = await commission.settle(LATER, limit=1_050)
    assert (result.orders, result.records, result.amount) == (
        1_050,
        records,
        sum(expected.values()),
    )
    (batch_id,) = result.batch_ids
    for promoter in promoters:
        balances = await commission.balances(promoter)
        assert (balances["frozen_amount"], balances["available_amount"]) == (
            0,
            expected[promoter],
        )
    # One transfer per promoter for the whole batch, carrying the sum of its records.
    settle_flows = await _settle_flows(commission)
    assert sorted((f["idempotency_key"], f["amount"]) for f in settle_flows) == sorted(
        (f"settle-batch:{batch_id}:{p}", expected[p]) for p in promoters
    )
    assert {f["transaction_id"] for f in settle_flows} == {batch_id}
    # Every record points at the batch and keeps what it was settled with.
    for order in orders[:50]:
        for record in await commission.records(order):
            assert record["status"] == "settled"
            assert record["settle_batch_id"] == batch_id
            assert record["settled_amount"] == record["amount"]
    async with commission.db.read(may_lag=False) as conn:
        batch = (await conn.execute(select(settle_batches))).one()._mapping
    assert (batch["order_count"], batch["record_count"], batch["promoter_count"]) == (
        1_050,
        records,
        9,
    )
    assert batch["amount"] == sum(expected.values())
    await _verified(commission)

    # Settling again (a redelivered commission_settle message, a new run, two at once)
    # changes nothing.
    flows_before = len(await commission.flows())
    when = LATER.astimezone(UTC).replace(tzinfo=None)
    order_ids = [o.order_id for o in orders]
    redelivered = await commission.run(
        lambda tx: settle_orders(tx, commission.ctx, order_ids, when)
    )
    assert (redelivered.orders, redelivered.records) == (0, 0)
    assert (await commission.settle(LATER, limit=5_000)).records == 0
    again = await asyncio.gather(commission.settle(LATER), commission.settle(LATER))
    assert [r.records for r in again] == [0, 0]
    assert len(await commission.flows()) == flows_before
    for promoter in promoters:
        assert (await commission.balances(promoter))["available_amount"] == expected[promoter]
    await _verified(commission)


async def test_concurrent_runs_settle_each_record_once(commission: Commission) -> None:
    """The scheduler's consumer, the admin run and an old-style (per-record) process at once:
    the guarded UPDATE gives every record to exactly one of them."""
    await commission.settings(frozen_days=0)
    await commission.rule(
        "default", [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}]
    )
    promoters = [fresh_id() for _ in range(5)]
    orders = await _due_orders(commission, promoters, 600)
    expected = _expected_by_promoter(orders, (1000, 500))
    results = await asyncio.gather(
        commission.settle(LATER, limit=200),
        commission.settle(LATER, limit=400),
        commission.settle(LATER, limit=300, per_record=True),
        commission.settle(LATER, limit=600),
    )
    while (await commission.settle(LATER)).orders:
        pass
    total = sum(r.records for r in results)
    assert total <= sum(len(o.beneficiaries) for o in orders)
    for promoter in promoters:
        balances = await commission.balances(promoter)
        assert (balances["frozen_amount"], balances["available_amount"]) == (
            0,
            expected[promoter],
        )
    for order in orders:
        assert {r["status"] for r in await commission.records(order)} == {"settled"}
    assert sum(f["amount"] for f in await _settle_flows(commission)) == sum(expected.values())
    await _verified(commission)


async def test_a_crashed_batch_leaves_nothing_and_the_rerun_settles_once(
    commission: Commission,
) -> None:
    await commission.settings(frozen_days=0)
    await commission.rule("default", [{"level": 1, "rate_bps": 1000}])
    parent = fresh_id()
    orders = [paid_order([parent], [item(10_000 + n)]) for n in range(20)]
    await commission.pay(*orders)
    for order in orders:
        await commission.complete(order)
    when = LATER.astimezone(UTC).replace(tzinfo=None)

    async def crashed(tx: Tx) -> None:
        await settle_due_now(tx, commission.ctx, when)
        raise Crash()

    with pytest.raises(Crash):
        await commission.db.run(crashed)
    assert (await commission.balances(parent))["available_amount"] == 0
    assert await _settle_flows(commission) == []
    assert {r["status"] for o in orders for r in await commission.records(o)} == {"frozen"}
    result = await commission.settle(LATER)
    assert (result.orders, result.amount) == (20, sum(1_000 + n // 10 for n in range(20)))
    assert (await commission.settle(LATER)).records == 0
    await _verified(commission)


async def test_refund_racing_a_batch_cannot_both_win(commission: Commission) -> None:
    """Whichever commits first, the record ends with what the refund leaves, and the money
    is where its status says (frozen refunded before settlement, or clawed back after)."""
    await commission.settings(frozen_days=0)
    await commission.rule("default", [{"level": 1, "rate_bps": 1000}])
    parent = fresh_id()
    sold = [item(10_000) for _ in range(30)]
    orders = [paid_order([parent], [s]) for s in sold]
    await commission.pay(*orders)
    for order in orders:
        await commission.complete(order)
    refunds = [refund(o, fresh_id(), {s.item_id: 2_500}) for o, s in zip(orders, sold, strict=True)]
    await asyncio.gather(
        commission.settle(LATER),
        *(commission.refund(r) for r in refunds[::2]),
        commission.refund(*refunds[1::2]),
    )
    while (await commission.settle(LATER)).orders:
        pass
    for order in orders:
        ((amount, status, reversed_amount),) = [
            (r["amount"], r["status"], r["reversed_amount"])
            for r in await commission.records(order)
        ]
        assert (amount, status, reversed_amount) == (250, "settled", 750)
    balances = await commission.balances(parent)
    assert (balances["frozen_amount"], balances["available_amount"]) == (0, 30 * 250)
    await _verified(commission)


async def test_clawback_after_a_batch_reverses_exactly_what_was_settled(
    commission: Commission,
) -> None:
    await commission.settings(frozen_days=0)
    await commission.rule(
        "default", [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}]
    )
    parent, grandparent = fresh_id(), fresh_id()
    shirt, socks = item(10_000), item(2_999)
    order = paid_order([parent, grandparent], [shirt, socks])
    other = paid_order([parent], [item(5_000)])
    await commission.pay(order, other)
    await commission.complete(order)
    await commission.complete(other)
    result = await commission.settle(LATER)
    assert (result.records, result.amount) == (5, 1_000 + 500 + 299 + 149 + 500)
    assert (await commission.balances(parent))["available_amount"] == 1_799
    # A partial refund of the shirt after settlement: 66.67 still paid.
    lines = await commission.refund(refund(order, fresh_id(), {shirt.item_id: 6_667}))
    assert sorted((line.level, line.amount) for line in lines) == [(1, 334), (2, 167)]
    # Then the socks wholly.
    await commission.refund(refund(order, fresh_id(), {socks.item_id: 0}))
    balances = await commission.balances(parent)
    assert (balances["frozen_amount"], balances["available_amount"]) == (0, 666 + 500)
    assert (await commission.balances(grandparent))["available_amount"] == 333
    records = {(r["item_id"], r["level"]): r for r in await commission.records(order)}
    shirt_line = records[(shirt.item_id, 1)]
    assert (shirt_line["amount"], shirt_line["settled_amount"], shirt_line["reversed_amount"]) == (
        666,
        1_000,
        334,
    )
    socks_line = records[(socks.item_id, 2)]
    assert (socks_line["status"], socks_line["amount"], socks_line["settled_amount"]) == (
        "reversed",
        0,
        149,
    )
    # The batch's transfers still equal what its records were settled with.
    await _verified(commission)


async def test_settled_events_per_order_and_a_released_record_settles_later(
    commission: Commission,
) -> None:
    await commission.settings(frozen_days=0)
    await commission.rule(
        "default", [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}]
    )
    parent, grandparent = fresh_id(), fresh_id()
    order = paid_order([parent, grandparent], [item(10_000)])
    await commission.pay(order)
    await commission.complete(order)
    held = next(r for r in await commission.records(order) if r["level"] == 2)
    await commission.run(lambda tx: change_hold(tx, commission.ctx, held["id"], True))
    first = await commission.settle(LATER)
    assert (first.records, first.amount) == (1, 1_000)
    await commission.run(lambda tx: change_hold(tx, commission.ctx, held["id"], False))
    second = await commission.settle(LATER)
    assert (second.records, second.amount) == (1, 500)
    balances = await commission.balances(grandparent)
    assert (balances["frozen_amount"], balances["available_amount"]) == (0, 500)
    await _verified(commission)

    async with commission.db.read(may_lag=False) as conn:
        rows = (
            await conn.execute(
                select(outbox.c.event_id, outbox.c.payload)
                .where(
                    outbox.c.topic == COMMISSION_EVENTS,
                    outbox.c.event_id.like("commission.settled:%"),
                )
                .order_by(outbox.c.seq)
            )
        ).all()
    # Two distinct facts of one order (the second would be lost under one id per order).
    assert [r[0] for r in rows] == [
        f"commission.settled:{order.order_id}:{first.batch_ids[0]}",
        f"commission.settled:{order.order_id}:{second.batch_ids[0]}",
    ]
    settled = [CommissionsChanged.model_validate(orjson.loads(r[1])["data"]) for r in rows]
    assert [[(line.beneficiary_id, line.amount) for line in s.lines] for s in settled] == [
        [(parent, 1_000)],
        [(grandparent, 500)],
    ]


def test_event_data_is_the_models_json() -> None:
    now = datetime(2026, 11, 26, 14, 3, 4, 56_789, tzinfo=UTC)
    lines = [
        {
            "record_id": 7_000_000_000_001,
            "order_id": 42,
            "item_id": 43,
            "level": level,
            "beneficiary_id": 9_000 + level,
            "amount": 1_234 * level,
            "currency": "CNY",
        }
        for level in (1, 2)
    ]
    built = settled_event_data(42, lines, json_moment(now))
    model = CommissionsChanged.model_validate({"order_id": 42, "lines": lines, "occurred_at": now})
    assert built == model.model_dump(mode="json")
    assert CommissionsChanged.model_validate(built) == model


async def test_migration_gives_existing_record_tables_the_batch_columns(db: Database) -> None:
    """A database made before batches: its record tables get the columns, nothing else
    changes, and settlement then works on them."""
    from services.commission.models import tables_for

    await migrate(db, MIGRATIONS[:2])
    tables = tables_for("Asia/Shanghai")
    month = "202611"
    async with db.primary.begin() as conn:
        await tables.records.ensure(conn, month)
        name = tables.records.for_month(month).name
        for column in ("settle_batch_id", "settled_amount"):
            await conn.execute(text(f"ALTER TABLE {name} DROP COLUMN {column}"))

    async def columns() -> set[str]:
        async with db.primary.begin() as conn:
            return await conn.run_sync(
                lambda sync: {c["name"] for c in inspect(sync).get_columns(name)}
            )

    assert "settle_batch_id" not in await columns()
    applied = await migrate(db, MIGRATIONS)
    assert 3 in applied
    assert {"settle_batch_id", "settled_amount"} <= await columns()
    assert await migrate(db, MIGRATIONS) == []
