"""Building real event data and running the commission use cases on a real database."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import select

from libs.common.business_settings import SettingsStore
from libs.common.db.engine import Database, Tx
from libs.common.events import (
    Beneficiary,
    OrderCompleted,
    OrderData,
    OrderItemData,
    OrderRefunded,
    RefundedItem,
)
from services.commission.accounts import account_balances
from services.commission.accrual import accrue_paid_orders
from services.commission.compliance import CommissionSettings, LevelTerms
from services.commission.context import CommissionContext
from services.commission.ledger import run_guarded
from services.commission.records import order_commissions
from services.commission.refunds import apply_refunds
from services.commission.rules import Rule, create_rule
from services.commission.settlement import (
    SettleResult,
    complete_orders,
    settle_due_now,
    settle_due_now_per_record,
)

T = TypeVar("T")
_counter = itertools.count(1)


def fresh_id() -> int:
    """Distinct ids for users, orders and items in one test (their shard genes vary)."""
    return 10_000_000 + next(_counter) * 17


def item(
    paid_amount: int,
    *,
    sku: str = "sku-1",
    category: str = "general",
    quantity: int = 1,
    refunded_amount: int = 0,
    item_id: int | None = None,
) -> OrderItemData:
    return OrderItemData(
        item_id=item_id or fresh_id(),
        sku=sku,
        category=category,
        quantity=quantity,
        unit_price_amount=paid_amount // max(quantity, 1),
        paid_amount=paid_amount,
        refunded_amount=refunded_amount,
    )


def paid_order(
    chain: Sequence[int],
    items: Sequence[OrderItemData],
    *,
    order_id: int | None = None,
    buyer: int | None = None,
    paid_at: datetime | None = None,
    currency: str = "CNY",
) -> OrderData:
    """An order.paid whose beneficiaries are ``chain`` (level 1 first)."""
    now = paid_at or datetime.now(UTC)
    return OrderData(
        order_id=order_id or fresh_id(),
        platform="default",
        order_no=f"NO-{fresh_id()}",
        buyer_user_id=buyer or fresh_id(),
        currency=currency,
        promoter_id=chain[0] if chain else None,
        beneficiaries=[Beneficiary(level=i, user_id=u) for i, u in enumerate(chain, start=1)],
        attribution_status="resolved" if chain else "none",
        items=list(items),
        shipping_amount=0,
        status="paid",
        created_at=now,
        paid_at=now,
    )


def refund(order: OrderData, refund_id: int, remaining: dict[int, int]) -> OrderRefunded:
    """An order.refunded leaving ``remaining[item_id]`` paid on each listed item."""
    paid = {i.item_id: i for i in order.items}
    return OrderRefunded(
        order_id=order.order_id,
        refund_id=refund_id,
        refund_no=f"R-{refund_id}",
        currency=order.currency,
        items=[
            RefundedItem(
                item_id=item_id,
                sku=paid[item_id].sku,
                refunded_amount=paid[item_id].paid_amount - left,
                remaining_paid_amount=left,
            )
            for item_id, left in remaining.items()
        ],
        refunded_at=datetime.now(UTC),
    )


class Commission:
    """The commission use cases on one database, each in its own transaction."""

    def __init__(self, db: Database, ctx: CommissionContext) -> None:
        self.db = db
        self.ctx = ctx

    async def run(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        return await run_guarded(self.db, work)  # type: ignore[no-any-return]

    async def settings(self, **patch: Any) -> CommissionSettings:
        store = SettingsStore(CommissionSettings, self.db)
        return await self.run(lambda tx: store.update(tx, patch))  # type: ignore[return-value]

    async def rule(
        self,
        scope: str,
        levels: list[dict[str, Any]],
        key: str | None = None,
        effective_from: datetime | None = None,
    ) -> Rule:
        terms = [LevelTerms(**lv) for lv in levels]
        return await self.run(
            lambda tx: create_rule(tx, self.ctx.ids, scope, key, terms, effective_from)
        )

    async def pay(self, *orders: OrderData) -> list[int]:
        return await self.run(lambda tx: accrue_paid_orders(tx, self.ctx, orders))

    async def refund(self, *refunds: OrderRefunded) -> Any:
        return await self.run(lambda tx: apply_refunds(tx, self.ctx, refunds))

    async def complete(self, order: OrderData, completed_at: datetime | None = None) -> int:
        done = OrderCompleted(
            order_id=order.order_id, completed_at=completed_at or datetime.now(UTC)
        )
        return await self.run(lambda tx: complete_orders(tx, self.ctx, [done]))

    async def settle(
        self, now: datetime | None = None, limit: int = 500, per_record: bool = False
    ) -> SettleResult:
        """One batch of what is due at ``now``; ``per_record``: the way before batches."""
        when = (now or datetime.now(UTC)).astimezone(UTC).replace(tzinfo=None)
        settle = settle_due_now_per_record if per_record else settle_due_now
        return await self.run(lambda tx: settle(tx, self.ctx, when, limit))

    async def records(self, order: OrderData) -> list[dict[str, Any]]:
        return await order_commissions(self.db, self.ctx.tables, order.order_id)

    async def amounts(self, order: OrderData) -> dict[tuple[int, int], int]:
        """{(item_id, level): amount} of an order's records."""
        return {(r["item_id"], r["level"]): r["amount"] for r in await self.records(order)}

    async def balances(self, promoter_id: int) -> dict[str, Any]:
        return await account_balances(self.db, promoter_id)

    async def flows(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        async with self.db.read(may_lag=False) as conn:
            for month in await self.ctx.tables.flows.existing_months(conn):
                table = self.ctx.tables.flows.for_month(month)
                found.extend(dict(r._mapping) for r in await conn.execute(select(table)))
        return found
