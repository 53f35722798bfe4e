"""Applying events to the stats (ARCHITECTURE §7, §9's meanings).

- order.paid: +1 order and + the items' paid amount for the order's promoter (level-1
  beneficiary) on the payment day;
- order.refunded: − the refunded amount from that promoter's order_amount on the refund day
  (a refund that arrives before its order.paid waits and is applied with it);
- commission.accrued / reversed: ± commission_amount of each line's beneficiary on the day
  of the event; commission.settled: + settled_commission_amount;
- user.bound / rebound / moved: +1 new customer for the parent on the bind day.

Every fact also enters the team queue (:mod:`services.stats.team`), which carries it to the
ancestors off the hot path. Duplicates are stopped by the consumer's inbox; orders and
refunds are also keyed by their ids here, so replaying one of those changes nothing either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import select, update

from libs.common.db.engine import Tx
from libs.common.db.sql import insert_ignore, upsert_add
from libs.common.events import CommissionsChanged, OrderData, OrderRefunded, UserBound
from libs.common.ids import shard_of
from libs.common.messaging.outbox import utcnow
from services.stats import leaderboard
from services.stats.models import (
    FIGURES,
    promoter_stats,
    stats_order_commissions,
    stats_orders,
    stats_refunds,
    team_members,
    team_queue,
)
from services.stats.service import Deltas, Figures, StatsStores, business_day
from services.stats.team import member_row, move_in_projection, path_of

COMMISSION_KINDS = {
    "commission.accrued": "accrued",
    "commission.reversed": "reversed",
    "commission.settled": "settled",
}


def summary_cache_key(promoter_id: int, today: date) -> str:
    return f"summary:{promoter_id}:{today.isoformat()}"


@dataclass
class _QueuedFact:
    user_id: int
    day: date
    ancestor_ids: list[int] | None
    figures: Figures


@dataclass
class StatsBatch:
    """The changes of one transaction: personal rows summed per (promoter, day), team facts,
    and what to do in Redis once the transaction committed."""

    tx: Tx
    stores: StatsStores
    personal: Deltas = field(default_factory=Deltas)
    queued: list[_QueuedFact] = field(default_factory=list)
    commission_facts: dict[tuple[int, int, str, date], int] = field(default_factory=dict)

    def _queue(
        self, user_id: int, day: date, ancestor_ids: list[int] | None, **changes: int
    ) -> None:
        figures = Figures()
        figures.add(changes)
        self.queued.append(_QueuedFact(user_id, day, ancestor_ids, figures))

    async def orders_paid(self, orders: Sequence[OrderData]) -> None:
        """Count new payments (one insert and two reads for the whole batch)."""
        conn = await self.tx.main()
        unique: dict[int, OrderData] = {}
        for data in orders:
            unique.setdefault(data.order_id, data)
        known = {
            int(n)
            for n in (
                await conn.execute(
                    select(stats_orders.c.order_id).where(stats_orders.c.order_id.in_(unique))
                )
            ).scalars()
        }
        fresh = [data for order_id, data in unique.items() if order_id not in known]
        if not fresh:
            return  # these payments were counted already
        rows, hints = [], {}
        for data in fresh:
            day = business_day(data.paid_at or data.created_at, self.stores.zone)
            paid_amount = sum(item.paid_amount for item in data.items)
            beneficiaries = [b.user_id for b in sorted(data.beneficiaries, key=lambda b: b.level)]
            hint = [user_id for user_id in beneficiaries if user_id != data.buyer_user_id]
            hints[data.order_id] = hint
            rows.append(
                {
                    "order_id": data.order_id,
                    "promoter_id": data.promoter_id,
                    "buyer_user_id": data.buyer_user_id,
                    "currency": data.currency,
                    "paid_day": day,
                    "paid_amount": paid_amount,
                    "refunded_amount": 0,
                    "beneficiary_ids": ",".join(str(n) for n in hint) or None,
                }
            )
            if data.promoter_id is not None:
                self.personal.add(data.promoter_id, day, order_count=1, order_amount=paid_amount)
                self._queue(data.buyer_user_id, day, hint, order_count=1, order_amount=paid_amount)
        await insert_ignore(conn, stats_orders, rows)
        # Refunds that overtook their order.paid (attribution was pending) land now, each on
        # its own day.
        waiting = (
            await conn.execute(
                select(
                    stats_refunds.c.refund_id,
                    stats_refunds.c.order_id,
                    stats_refunds.c.day,
                    stats_refunds.c.amount,
                )
                .where(stats_refunds.c.order_id.in_(list(hints)))
                .where(stats_refunds.c.applied.is_(False))
            )
        ).all()
        for refund_id, order_id, refund_day, amount in waiting:
            data = unique[int(order_id)]
            await self._apply_refund(
                data.order_id,
                data.promoter_id,
                data.buyer_user_id,
                hints[data.order_id],
                refund_day,
                amount,
            )
            await conn.execute(
                update(stats_refunds)
                .where(stats_refunds.c.refund_id == refund_id)
                .values(applied=True)
            )

    async def _apply_refund(
        self,
        order_id: int,
        promoter_id: int | None,
        buyer_user_id: int,
        hint: list[int] | None,
        day: date,
        amount: int,
    ) -> None:
        conn = await self.tx.main()
        await conn.execute(
            update(stats_orders)
            .where(stats_orders.c.order_id == order_id)
            .values(refunded_amount=stats_orders.c.refunded_amount + amount)
        )
        if promoter_id is not None and amount:
            self.personal.add(promoter_id, day, order_amount=-amount)
            self._queue(buyer_user_id, day, hint, order_amount=-amount)

    async def order_refunded(self, data: OrderRefunded) -> None:
        conn = await self.tx.main()
        day = business_day(data.refunded_at, self.stores.zone)
        amount = sum(item.refunded_amount for item in data.items)
        order = (
            await conn.execute(
                select(
                    stats_orders.c.promoter_id,
                    stats_orders.c.buyer_user_id,
                    stats_orders.c.beneficiary_ids,
                ).where(stats_orders.c.order_id == data.order_id)
            )
        ).first()
        inserted = await insert_ignore(
            conn,
            stats_refunds,
            [
                {
                    "refund_id": data.refund_id,
                    "order_id": data.order_id,
                    "day": day,
                    "amount": amount,
                    "applied": order is not None,
                }
            ],
        )
        if not inserted or order is None:
            return  # seen before, or waiting for its order.paid
        promoter_id, buyer_user_id, beneficiary_ids = order
        hint = [int(n) for n in beneficiary_ids.split(",")] if beneficiary_ids else None
        await self._apply_refund(data.order_id, promoter_id, buyer_user_id, hint, day, amount)

    def commissions_changed(self, event_type: str, data: CommissionsChanged) -> None:
        kind = COMMISSION_KINDS[event_type]
        day = business_day(data.occurred_at, self.stores.zone)
        per_beneficiary: dict[int, int] = {}
        for line in data.lines:
            per_beneficiary[line.beneficiary_id] = (
                per_beneficiary.get(line.beneficiary_id, 0) + line.amount
            )
        for beneficiary_id, amount in per_beneficiary.items():
            if kind == "settled":
                changes = {"settled_commission_amount": amount}
            else:
                changes = {"commission_amount": amount if kind == "accrued" else -amount}
            self.personal.add(beneficiary_id, day, **changes)
            self._queue(beneficiary_id, day, None, **changes)
            key = (data.order_id, beneficiary_id, kind, day)
            self.commission_facts[key] = self.commission_facts.get(key, 0) + amount

    async def binds(self, binds: Sequence[UserBound]) -> None:
        """New customers for the parents, and the projection of the tree (new members in
        one insert; a member that moved, rarely, with its subtree)."""
        conn = await self.tx.main()
        user_ids = sorted({data.user_id for data in binds})
        paths = {
            int(user_id): path
            for user_id, path in await conn.execute(
                select(team_members.c.user_id, team_members.c.path).where(
                    team_members.c.user_id.in_(user_ids)
                )
            )
        }
        pending: dict[int, dict[str, Any]] = {}
        for data in binds:
            day = business_day(data.bound_at, self.stores.zone)
            ancestors = data.ancestors() or [data.parent_id]
            self.personal.add(data.parent_id, day, new_customers=1)
            self._queue(data.user_id, day, ancestors, new_customers=1)
            path = path_of(data.user_id, ancestors)
            if data.user_id not in paths:
                pending[data.user_id] = member_row(data.user_id, path)
            elif paths[data.user_id] != path:
                # The subtree may include members of this batch: write them first.
                await insert_ignore(conn, team_members, list(pending.values()))
                pending.clear()
                await move_in_projection(conn, data.user_id, ancestors)
            paths[data.user_id] = path
        await insert_ignore(conn, team_members, list(pending.values()))

    async def flush(self) -> None:
        """Write the summed rows and the team facts; after the commit, invalidate the cached
        summaries and move the leaderboards."""
        await upsert_add(
            await self.tx.main(),
            stats_order_commissions,
            [
                {"order_id": o, "beneficiary_id": b, "kind": k, "day": d, "amount": amount}
                for (o, b, k, d), amount in self.commission_facts.items()
            ],
            ["order_id", "beneficiary_id", "kind", "day"],
            ["amount"],
        )
        rows = self.personal.non_zero()
        by_shard: dict[int, list[dict[str, Any]]] = {}
        for (promoter_id, day), figures in rows.items():
            by_shard.setdefault(shard_of(promoter_id), []).append(
                {"promoter_id": promoter_id, "day": day, **figures.as_dict()}
            )
        for shard, shard_rows in sorted(by_shard.items()):
            await upsert_add(
                await self.tx.shard(shard),
                promoter_stats.for_shard(shard),
                shard_rows,
                ["promoter_id", "day"],
                FIGURES,
            )
        queue_rows = [
            {
                "user_id": fact.user_id,
                "day": fact.day,
                "ancestor_ids": ",".join(str(a) for a in fact.ancestor_ids)
                if fact.ancestor_ids
                else None,
                "created_at": utcnow(),
                **fact.figures.as_dict(),
            }
            for fact in self.queued
            if not fact.figures.is_zero()
        ]
        if queue_rows:
            await (await self.tx.main()).execute(team_queue.insert(), queue_rows)
        if not rows:
            return
        stores = self.stores
        promoters = sorted({promoter_id for promoter_id, _ in rows})

        async def after_commit() -> None:
            # Summaries are cached per business day; only today's can be read from now on.
            today = stores.today()
            await stores.cache.invalidate(*(summary_cache_key(p, today) for p in promoters))
            await leaderboard.add_deltas(stores, rows)

        self.tx.after_commit(after_commit)


async def apply_event_data(tx: Tx, stores: StatsStores, events: Sequence[tuple[str, Any]]) -> None:
    """Apply decoded events ``(type, data model)`` in one transaction (the consumer's).

    Binds first (the tree), then payments, then refunds (a refund finds a payment of the
    same batch), then commission changes; the order between kinds does not change any sum.
    """
    batch = StatsBatch(tx, stores)
    by_type: dict[str, list[Any]] = {}
    for event_type, data in events:
        kind = "user.bound" if event_type in ("user.rebound", "user.moved") else event_type
        by_type.setdefault(kind, []).append((event_type, data))
    await batch.binds([data for _, data in by_type.get("user.bound", [])])
    await batch.orders_paid([data for _, data in by_type.get("order.paid", [])])
    for _, data in by_type.get("order.refunded", []):
        await batch.order_refunded(data)
    for event_type, data in events:
        if event_type in COMMISSION_KINDS:
            batch.commissions_changed(event_type, data)
    await batch.flush()
