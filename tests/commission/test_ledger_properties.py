"""Hypothesis stateful test: random sequences of pay / duplicate delivery / partial refund /
complete / settle (batched, two batches at once, or per record as before batches) /
crash-and-redeliver. After every step the ledger sums to zero, every
balance equals its entries, no line exceeds its cap or its paid base, and every line equals
the rule applied to what its item still has paid."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from libs.common.db.engine import Database, Tx
from libs.common.db.migrations import migrate
from libs.common.events import OrderData
from libs.common.ids import IdGenerator
from services.commission.accrual import accrue_paid_orders
from services.commission.calculation import item_lines
from services.commission.compliance import LevelTerms
from services.commission.context import CommissionContext
from services.commission.ledger import verify
from services.commission.migrations import MIGRATIONS, ensure_monthly_tables
from services.commission.models import tables_for
from services.commission.refunds import apply_refunds
from tests.commission.helpers import Commission, fresh_id, item, paid_order, refund

T = TypeVar("T")

DEFAULT_TERMS = [
    LevelTerms(level=1, rate_bps=1000, cap_amount=800),
    LevelTerms(level=2, rate_bps=500),
]
# Small fixed amounts on dear units: never clamped by the 30% cap (clamping has its own test).
FIXED_TERMS = [LevelTerms(level=1, fixed_amount=150), LevelTerms(level=2, fixed_amount=50)]


class Crash(Exception):
    """The process died before the transaction committed."""


@dataclass
class OrderModel:
    order: OrderData
    remaining: dict[int, int]
    refunds: list[tuple[int, dict[int, int]]] = field(default_factory=list)


@pytest.fixture
def property_db(
    backend: Any, tmp_path: Path
) -> Iterator[tuple[asyncio.AbstractEventLoop, Database]]:
    """One database for all examples (each example uses its own promoters and orders), on an
    event loop of our own: hypothesis drives the machine synchronously."""
    loop = asyncio.new_event_loop()
    name = None
    if backend.mysql_url is None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'property.db'}"
    else:
        name = f"tuike_p{secrets.token_hex(4)}"
        url = f"{backend.mysql_url.rstrip('/')}/{name}?charset=utf8mb4"
        loop.run_until_complete(_mysql(backend.mysql_url, f"CREATE DATABASE `{name}`"))
    db = Database(url)
    loop.run_until_complete(migrate(db, MIGRATIONS))
    loop.run_until_complete(
        ensure_monthly_tables(db, tables_for("Asia/Shanghai"), datetime.now(UTC), 1)
    )
    try:
        yield loop, db
    finally:
        loop.run_until_complete(db.dispose())
        if name is not None:
            loop.run_until_complete(_mysql(backend.mysql_url, f"DROP DATABASE `{name}`"))
        loop.close()


async def _mysql(server_url: str, statement: str) -> None:
    engine = create_async_engine(server_url.rstrip("/") + "/")
    async with engine.begin() as conn:
        await conn.execute(text(statement))
    await engine.dispose()


def test_ledger_invariants_hold_for_random_histories(
    property_db: tuple[asyncio.AbstractEventLoop, Database],
) -> None:
    loop, db = property_db
    commission = Commission(db, CommissionContext(IdGenerator(21), tables_for("Asia/Shanghai")))

    def run(coro: Awaitable[T]) -> T:
        return loop.run_until_complete(coro)  # type: ignore[arg-type]

    run(commission.settings(frozen_days=0))
    run(commission.rule("default", [t.__dict__ for t in DEFAULT_TERMS]))
    run(commission.rule("category", [t.__dict__ for t in FIXED_TERMS], key="fixed"))

    class LedgerMachine(RuleBasedStateMachine):
        orders = Bundle("orders")

        @initialize()
        def promoters(self) -> None:
            self.pool = [fresh_id() for _ in range(3)]
            self.models: dict[int, OrderModel] = {}

        @rule(
            target=orders,
            chain=st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),
            items=st.lists(
                st.tuples(st.integers(1_000, 30_000), st.integers(1, 3), st.booleans()),
                min_size=1,
                max_size=3,
            ),
        )
        def pay(self, chain: list[int], items: list[tuple[int, int, bool]]) -> int:
            order = paid_order(
                [self.pool[i] for i in chain],
                [
                    item(unit * qty, quantity=qty, category="fixed" if fixed else "general")
                    for unit, qty, fixed in items
                ],
            )
            self.models[order.order_id] = OrderModel(
                order, {i.item_id: i.paid_amount for i in order.items}
            )
            assert run(commission.pay(order)) == [order.order_id]
            return order.order_id

        @rule(order_id=orders)
        def deliver_again(self, order_id: int) -> None:
            assert run(commission.pay(self.models[order_id].order)) == []

        @rule(order_id=orders, data=st.data())
        def partial_refund(self, order_id: int, data: st.DataObject) -> None:
            model = self.models[order_id]
            item_id = data.draw(st.sampled_from(sorted(model.remaining)))
            left = data.draw(st.integers(0, model.remaining[item_id]))
            model.remaining[item_id] = left
            refund_id = fresh_id()
            model.refunds.append((refund_id, {item_id: left}))
            run(commission.refund(refund(model.order, refund_id, {item_id: left})))

        @rule(order_id=orders)
        def redeliver_old_refunds(self, order_id: int) -> None:
            for refund_id, remaining in self.models[order_id].refunds:
                run(commission.refund(refund(self.models[order_id].order, refund_id, remaining)))

        @rule(order_id=orders)
        def complete(self, order_id: int) -> None:
            run(commission.complete(self.models[order_id].order, datetime.now(UTC)))

        @rule()
        def settle(self) -> None:
            run(commission.settle(datetime.now(UTC) + timedelta(seconds=1)))

        @rule(limit=st.integers(1, 3))
        def settle_twice_at_once(self, limit: int) -> None:
            """The scheduler's batch and an admin run at the same moment."""
            when = datetime.now(UTC) + timedelta(seconds=1)

            async def both() -> None:
                await asyncio.gather(commission.settle(when, limit), commission.settle(when, limit))

            run(both())

        @rule()
        def settle_the_old_way(self) -> None:
            """Per-record transfers (a ledger written before batches) mix with batches."""
            run(commission.settle(datetime.now(UTC) + timedelta(seconds=1), per_record=True))

        @rule(order_id=orders, data=st.data())
        def crash_then_redeliver(self, order_id: int, data: st.DataObject) -> None:
            """A crash before the commit leaves nothing; the redelivery then applies once."""
            model = self.models[order_id]
            item_id = data.draw(st.sampled_from(sorted(model.remaining)))
            left = data.draw(st.integers(0, model.remaining[item_id]))
            event = refund(model.order, fresh_id(), {item_id: left})
            ctx = commission.ctx

            def crashing(work: Callable[[Tx], Awaitable[Any]]) -> Callable[[Tx], Awaitable[None]]:
                async def crashed(tx: Tx) -> None:
                    await work(tx)
                    raise Crash()

                return crashed

            with pytest.raises(Crash):
                run(db.run(crashing(lambda tx: apply_refunds(tx, ctx, [event]))))
            with pytest.raises(Crash):
                run(db.run(crashing(lambda tx: accrue_paid_orders(tx, ctx, [model.order]))))
            model.remaining[item_id] = left
            model.refunds.append((event.refund_id, {item_id: left}))
            run(commission.refund(event))

        @invariant()
        def ledger_balances(self) -> None:
            report = run(verify(db, commission.ctx.tables, self.pool))
            assert report.ok, report
            assert report.ledger_total == 0

        def teardown(self) -> None:
            # Checked at the end of each history (every step is checked by the ledger
            # invariant above; reading every record after every step is too slow on MariaDB).
            self.lines_follow_the_rules()

        def lines_follow_the_rules(self) -> None:
            frozen: dict[int, int] = dict.fromkeys(self.pool, 0)
            available: dict[int, int] = dict.fromkeys(self.pool, 0)
            for model in self.models.values():
                records = run(commission.records(model.order))
                by_item = {i.item_id: i for i in model.order.items}
                for record in records:
                    paid_item = by_item[record["item_id"]]
                    terms = FIXED_TERMS if paid_item.category == "fixed" else DEFAULT_TERMS
                    left = model.remaining[paid_item.item_id]
                    expected = item_lines(
                        terms, left, paid_item.quantity, paid_item.paid_amount, 3_000
                    )
                    line = next(x for x in expected if x.level == record["level"])
                    assert record["amount"] == line.amount
                    assert record["base_amount"] == left
                    if record["cap_amount"] is not None:
                        assert record["amount"] <= record["cap_amount"]
                    if record["fixed_amount"] is None:
                        assert record["amount"] <= left
                    assert record["status"] == ("reversed" if left == 0 else record["status"])
                    if record["status"] == "frozen":
                        frozen[record["beneficiary_id"]] += record["amount"]
                    elif record["status"] == "settled":
                        available[record["beneficiary_id"]] += record["amount"]
            for promoter in self.pool:
                balances = run(commission.balances(promoter))
                assert balances["frozen_amount"] == frozen[promoter]
                assert balances["available_amount"] == available[promoter]

    run_state_machine_as_test(
        LedgerMachine,
        settings=settings(
            max_examples=25,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )
