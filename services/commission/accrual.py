"""Accrual on ``order.paid``: one record per (order item, level), status frozen, and the
ledger transfers (platform expense → the promoter's frozen account), exactly once however
often the event arrives, for a micro-batch of orders in one transaction."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.engine import Tx
from libs.common.db.sql import insert_ignore
from libs.common.events import CommissionLine, CommissionsChanged, OrderData
from libs.common.messaging.envelope import COMMISSION_EVENTS, make_event
from libs.common.messaging.outbox import publish, utcnow
from libs.common.metrics import COMMISSION_CALCULATION_DURATION
from services.commission.calculation import item_lines
from services.commission.compliance import CommissionSettings, LevelTerms, Profile, profile_of
from services.commission.context import CommissionContext, aware, naive_utc
from services.commission.ledger import (
    PLATFORM_EXPENSE,
    StaleWrite,
    Transfer,
    post_transfers,
    promoter_account,
)
from services.commission.models import commission_orders, promoter_status
from services.commission.refunds import apply_waiting_refunds
from services.commission.rules import RuleBook, all_rules
from services.commission.settings import load_settings


@dataclass(frozen=True)
class Earner:
    level: int
    user_id: int
    forfeited: bool  # a disabled promoter under the `forfeit` policy: the platform keeps it


def earners_of(
    order: OrderData,
    statuses: dict[int, str],
    settings: CommissionSettings,
    profile: Profile,
) -> list[Earner]:
    """Who earns at which level: the order's beneficiary snapshot, with disabled promoters
    forfeiting their line or compressed out (the next ancestor moves up), limited to the
    profile's levels; level 0 (self-purchase) only when the setting allows it."""
    chain = sorted((b for b in order.beneficiaries if b.level >= 1), key=lambda b: b.level)
    if settings.disabled_ancestor_policy == "compress":
        active = [b for b in chain if statuses.get(b.user_id) != "disabled"]
        found = [Earner(i, b.user_id, False) for i, b in enumerate(active, start=1)]
    else:
        found = [Earner(b.level, b.user_id, statuses.get(b.user_id) == "disabled") for b in chain]
    found = [e for e in found if e.level <= profile.max_levels]
    if settings.self_purchase_enabled:
        explicit = next((b.user_id for b in order.beneficiaries if b.level == 0), None)
        buyer_is_promoter = statuses.get(order.buyer_user_id) == "approved"
        self_earner = explicit or (order.buyer_user_id if buyer_is_promoter else None)
        if self_earner is not None:
            found.insert(0, Earner(0, self_earner, statuses.get(self_earner) == "disabled"))
    return found


def for_tier(terms: LevelTerms | None, tier: str | None) -> LevelTerms:
    """A level's terms for an earner: the rate of the earner's tier when the rule has one."""
    assert terms is not None
    if tier is None or not terms.tier_rates or tier not in terms.tier_rates:
        return terms
    return replace(terms, rate_bps=terms.tier_rates[tier], tier_rates=None)


async def accrue_paid_orders(
    tx: Tx, ctx: CommissionContext, orders: Sequence[OrderData], now: datetime | None = None
) -> list[int]:
    """Accrue the commissions of paid orders; returns the ids of orders accrued now (an order
    accrued before is skipped, so duplicates and redeliveries change nothing)."""
    started = time.perf_counter()
    try:
        return await _accrue(tx, ctx, orders, now or utcnow())
    finally:
        COMMISSION_CALCULATION_DURATION.observe(time.perf_counter() - started)


async def _accrue(
    tx: Tx, ctx: CommissionContext, orders: Sequence[OrderData], now: datetime
) -> list[int]:
    unique: dict[int, OrderData] = {}
    for order in orders:
        unique.setdefault(order.order_id, order)
    settings = await load_settings(tx)
    profile = profile_of(settings)
    candidates = [
        o
        for o in unique.values()
        if o.beneficiaries or (settings.self_purchase_enabled and o.items)
    ]
    if not candidates:
        return []
    conn = await tx.main()
    record_table = ctx.tables.records.for_time(aware(now))
    fresh = await _claim(conn, candidates, now, record_table.name[-6:])
    if not fresh:
        return []
    people = {b.user_id for o in fresh for b in o.beneficiaries} | {o.buyer_user_id for o in fresh}
    statuses: dict[int, str] = {}
    tiers: dict[int, str] = {}
    for user_id, status, tier in await conn.execute(
        select(promoter_status.c.user_id, promoter_status.c.status, promoter_status.c.tier).where(
            promoter_status.c.user_id.in_(people)
        )
    ):
        statuses[int(user_id)] = str(status)
        if tier:
            tiers[int(user_id)] = str(tier)
    completed = {
        int(r[0]): r[1]
        for r in await conn.execute(
            select(commission_orders.c.order_id, commission_orders.c.unfreeze_at).where(
                commission_orders.c.order_id.in_([o.order_id for o in fresh]),
                commission_orders.c.unfreeze_at.is_not(None),
            )
        )
    }
    book = RuleBook(await all_rules(conn))

    # One month's table for the batch: the claim rows say which, for reads by order.
    records: list[dict[str, object]] = []
    transfers: list[Transfer] = []
    transaction_ids: list[int] = []
    events = []
    for order in fresh:
        paid_at = naive_utc(order.paid_at) or now
        earners = earners_of(order, statuses, settings, profile)
        transaction_id = ctx.ids.next_id(0)
        lines: list[CommissionLine] = []
        for item in order.items:
            rule = book.rule_for_item(item.sku, item.category, paid_at)
            if rule is None or not earners:
                continue
            base = max(0, item.paid_amount - item.refunded_amount)
            present = [e for e in earners if rule.terms_for(e.level) is not None]
            terms = [for_tier(rule.terms_for(e.level), tiers.get(e.user_id)) for e in present]
            computed = item_lines(
                terms,
                base,
                item.quantity,
                item.paid_amount,
                profile.total_cap_bps,
            )
            for earner, line, level_terms in zip(present, computed, terms, strict=True):
                record_id = ctx.ids.next_id_for(earner.user_id)
                amount = 0 if earner.forfeited else line.amount
                row = {
                    "id": record_id,
                    "order_id": order.order_id,
                    "item_id": item.item_id,
                    "sku": item.sku,
                    "category": item.category,
                    "level": earner.level,
                    "beneficiary_id": earner.user_id,
                    "buyer_user_id": order.buyer_user_id,
                    "currency": order.currency,
                    "quantity": item.quantity,
                    "item_paid_amount": item.paid_amount,
                    "base_amount": base,
                    "rate_bps": level_terms.rate_bps,
                    "cap_amount": level_terms.cap_amount,
                    "fixed_amount": level_terms.fixed_amount,
                    "accrued_amount": amount,
                    "reversed_amount": 0,
                    "amount": amount,
                    "status": "void" if earner.forfeited else "frozen",
                    "clamped": line.clamped,
                    "note": "forfeited: promoter disabled" if earner.forfeited else None,
                    "rule_id": rule.id,
                    "rule_version": rule.version,
                    "paid_at": paid_at,
                    "created_at": now,
                    "unfreeze_at": completed.get(order.order_id),
                    "settled_at": None,
                    "updated_at": now,
                }
                records.append(row)
                if amount > 0:
                    transfers.append(
                        Transfer(
                            kind="accrue",
                            key=f"accrue:{order.order_id}:{item.item_id}:{earner.level}",
                            debit=PLATFORM_EXPENSE,
                            credit=promoter_account(earner.user_id, "frozen"),
                            amount=amount,
                            currency=order.currency,
                            order_id=order.order_id,
                            record_id=record_id,
                        )
                    )
                    transaction_ids.append(transaction_id)
                    lines.append(
                        CommissionLine(
                            record_id=record_id,
                            order_id=order.order_id,
                            item_id=item.item_id,
                            level=earner.level,
                            beneficiary_id=earner.user_id,
                            amount=amount,
                            currency=order.currency,
                        )
                    )
        if lines:
            events.append(
                make_event(
                    "commission.accrued",
                    order.order_id,
                    key=order.order_id,
                    data=CommissionsChanged(
                        order_id=order.order_id, lines=lines, occurred_at=aware(now)
                    ).model_dump(mode="json"),
                    source="commission",
                )
            )
    if records:
        await conn.execute(record_table.insert(), records)
    await post_transfers(tx, ctx.ids, ctx.tables, transfers, now, transaction_ids)
    if events:
        await publish(tx, COMMISSION_EVENTS, *events)
    accrued = [o.order_id for o in fresh]
    await apply_waiting_refunds(tx, ctx, accrued, now)
    return accrued


async def _claim(
    conn: AsyncConnection, orders: list[OrderData], now: datetime, month: str
) -> list[OrderData]:
    """The orders not accrued before, now claimed (``accrued_at`` set) in this transaction.

    The claim row may already exist when ``order.completed`` overtook ``order.paid``."""
    ids = [o.order_id for o in orders]
    existing = {
        int(r[0]): r[1]
        for r in await conn.execute(
            select(commission_orders.c.order_id, commission_orders.c.accrued_at)
            .where(commission_orders.c.order_id.in_(ids))
            .with_for_update()
        )
    }
    fresh = [o for o in orders if existing.get(o.order_id, None) is None]
    if not fresh:
        return []
    new_rows = [
        {
            "order_id": o.order_id,
            "record_month": month,
            "currency": o.currency,
            "paid_at": naive_utc(o.paid_at) or now,
            "accrued_at": now,
        }
        for o in fresh
        if o.order_id not in existing
    ]
    if new_rows and await insert_ignore(conn, commission_orders, new_rows) != len(new_rows):
        raise StaleWrite("another writer claimed one of these orders")
    known = [o for o in fresh if o.order_id in existing]
    for order in known:
        result = await conn.execute(
            update(commission_orders)
            .where(
                commission_orders.c.order_id == order.order_id,
                commission_orders.c.accrued_at.is_(None),
            )
            .values(
                accrued_at=now,
                paid_at=naive_utc(order.paid_at) or now,
                currency=order.currency,
                record_month=month,
            )
        )
        if result.rowcount != 1:
            raise StaleWrite("another writer accrued this order")
    return fresh


def unfreeze_time(completed_at: datetime, frozen_days: int) -> datetime:
    return completed_at + timedelta(days=frozen_days)
