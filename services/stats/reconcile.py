"""``python -m services.stats.reconcile --from YYYY-MM-DD --to YYYY-MM-DD [--repair]
[--no-services]``: recompute the stats of a day range and report differences.

Two checks:

1. the daily rows against a recomputation from the facts this service keeps (orders as paid,
   refunds, commission changes per order): finds rows that drifted (a bug, a hand edit, a
   lost write). ``--repair`` rewrites the differing figures from the recomputation.
2. each order paid in the range against the order service (``GET /api/v1/orders/{id}``:
   promoter, paid and refunded amounts) and the commission service
   (``GET /api/v1/orders/{id}/commissions``: net commission per beneficiary): finds events
   we missed or misread.

Not covered, because no read API lists them: orders we never heard of (the order service
has no "orders paid on a day" list), and new_customers (the user service lists a promoter's
current children, not the binds of a day, and a rebind takes a child away).
Exit status: 0 when nothing differs, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import httpx
from sqlalchemy import and_, func, select

from libs.common.auth import internal_headers
from libs.common.db.engine import Database, Tx
from libs.common.db.sql import upsert_replace
from libs.common.ids import SHARD_COUNT, shard_of
from libs.common.redis import Cache, connect
from libs.common.settings import ServiceSettings
from services.stats.ingest import summary_cache_key
from services.stats.models import (
    promoter_stats,
    stats_order_commissions,
    stats_orders,
    stats_refunds,
)
from services.stats.service import StatsStores

# The figures the facts can recompute (new_customers has no fact source; see above).
CHECKED = ("order_count", "order_amount", "commission_amount", "settled_commission_amount")


@dataclass(frozen=True)
class RowDifference:
    promoter_id: int
    day: date
    figure: str
    recorded: int
    recomputed: int


@dataclass(frozen=True)
class OrderDifference:
    order_id: int
    what: str
    ours: Any
    theirs: Any


Key = tuple[int, date]


async def recompute(db: Database, first: date, last: date) -> dict[Key, dict[str, int]]:
    """The checked figures per (promoter, day) from the facts."""
    result: dict[Key, dict[str, int]] = {}

    def add(promoter_id: int, day: date, figure: str, amount: int) -> None:
        row = result.setdefault((int(promoter_id), day), dict.fromkeys(CHECKED, 0))
        row[figure] += int(amount)

    async with db.read(may_lag=False) as conn:
        for promoter_id, day, count, amount in await conn.execute(
            select(
                stats_orders.c.promoter_id,
                stats_orders.c.paid_day,
                func.count(),
                func.sum(stats_orders.c.paid_amount),
            )
            .where(stats_orders.c.promoter_id.is_not(None))
            .where(stats_orders.c.paid_day.between(first, last))
            .group_by(stats_orders.c.promoter_id, stats_orders.c.paid_day)
        ):
            add(promoter_id, day, "order_count", count)
            add(promoter_id, day, "order_amount", amount)
        for promoter_id, day, amount in await conn.execute(
            select(
                stats_orders.c.promoter_id, stats_refunds.c.day, func.sum(stats_refunds.c.amount)
            )
            .select_from(
                stats_refunds.join(
                    stats_orders, stats_orders.c.order_id == stats_refunds.c.order_id
                )
            )
            .where(
                and_(
                    stats_refunds.c.applied.is_(True),
                    stats_orders.c.promoter_id.is_not(None),
                    stats_refunds.c.day.between(first, last),
                )
            )
            .group_by(stats_orders.c.promoter_id, stats_refunds.c.day)
        ):
            add(promoter_id, day, "order_amount", -int(amount))
        facts = stats_order_commissions.c
        for beneficiary_id, day, kind, amount in await conn.execute(
            select(facts.beneficiary_id, facts.day, facts.kind, func.sum(facts.amount))
            .where(facts.day.between(first, last))
            .group_by(facts.beneficiary_id, facts.day, facts.kind)
        ):
            if kind == "settled":
                add(beneficiary_id, day, "settled_commission_amount", amount)
            else:
                sign = 1 if kind == "accrued" else -1
                add(beneficiary_id, day, "commission_amount", sign * int(amount))
    return result


async def recorded(db: Database, first: date, last: date) -> dict[Key, dict[str, int]]:
    """The checked figures per (promoter, day) as the daily rows hold them."""
    result: dict[Key, dict[str, int]] = {}
    for shard in range(SHARD_COUNT):
        table = promoter_stats.for_shard(shard)
        async with db.read_shard(shard, may_lag=False) as conn:
            for row in await conn.execute(
                select(table.c.promoter_id, table.c.day, *(table.c[f] for f in CHECKED)).where(
                    table.c.day.between(first, last)
                )
            ):
                result[(int(row[0]), row[1])] = dict(zip(CHECKED, map(int, row[2:]), strict=True))
    return result


async def compare_rows(db: Database, first: date, last: date) -> list[RowDifference]:
    want = await recompute(db, first, last)
    have = await recorded(db, first, last)
    differences = []
    for key in sorted(set(want) | set(have)):
        zero = dict.fromkeys(CHECKED, 0)
        for figure in CHECKED:
            mine, right = have.get(key, zero)[figure], want.get(key, zero)[figure]
            if mine != right:
                differences.append(RowDifference(key[0], key[1], figure, mine, right))
    return differences


async def repair(
    db: Database,
    stores: StatsStores | None,
    differences: list[RowDifference],
    first: date,
    last: date,
) -> int:
    """Rewrite the checked figures of every differing row from the recomputation."""
    want = await recompute(db, first, last)
    keys = sorted({(d.promoter_id, d.day) for d in differences})
    if not keys:
        return 0

    async def work(tx: Tx) -> None:
        for promoter_id, day in keys:
            figures = want.get((promoter_id, day), dict.fromkeys(CHECKED, 0))
            await upsert_replace(
                await tx.shard(shard_of(promoter_id)),
                promoter_stats.for_id(promoter_id),
                [{"promoter_id": promoter_id, "day": day, "new_customers": 0, **figures}],
                ["promoter_id", "day"],
                CHECKED,
            )
        if stores is not None:
            today = stores.today()

            async def invalidate() -> None:
                await stores.cache.invalidate(
                    *(
                        summary_cache_key(p, d)
                        for p in {k[0] for k in keys}
                        for d in (today, today - timedelta(days=1))
                    )
                )

            tx.after_commit(invalidate)

    await db.run(work)
    return len(keys)


async def compare_with_services(
    db: Database,
    first: date,
    last: date,
    order_service_url: str,
    commission_service_url: str,
    headers: dict[str, str],
) -> list[OrderDifference]:
    """Each order paid in [first, last] as we recorded it against the order and commission
    services' read APIs."""
    async with db.read(may_lag=False) as conn:
        orders = (
            await conn.execute(
                select(
                    stats_orders.c.order_id,
                    stats_orders.c.promoter_id,
                    stats_orders.c.paid_amount,
                    stats_orders.c.refunded_amount,
                ).where(stats_orders.c.paid_day.between(first, last))
            )
        ).all()
        facts = stats_order_commissions.c
        nets: dict[int, dict[int, int]] = {}
        ids = [int(o[0]) for o in orders]
        for start in range(0, len(ids), 500):
            for order_id, beneficiary_id, kind, amount in await conn.execute(
                select(facts.order_id, facts.beneficiary_id, facts.kind, func.sum(facts.amount))
                .where(facts.order_id.in_(ids[start : start + 500]))
                .where(facts.kind != "settled")
                .group_by(facts.order_id, facts.beneficiary_id, facts.kind)
            ):
                per_order = nets.setdefault(int(order_id), {})
                sign = 1 if kind == "accrued" else -1
                per_order[int(beneficiary_id)] = per_order.get(int(beneficiary_id), 0) + sign * int(
                    amount
                )
    differences: list[OrderDifference] = []
    async with httpx.AsyncClient(timeout=5.0, headers=headers) as client:
        for order_id, promoter_id, paid_amount, refunded_amount in orders:
            differences.extend(
                await _check_order(
                    client,
                    order_service_url,
                    commission_service_url,
                    int(order_id),
                    promoter_id,
                    int(paid_amount),
                    int(refunded_amount),
                    nets.get(int(order_id), {}),
                )
            )
    return differences


async def _check_order(
    client: httpx.AsyncClient,
    order_service_url: str,
    commission_service_url: str,
    order_id: int,
    promoter_id: int | None,
    paid_amount: int,
    refunded_amount: int,
    net_commissions: dict[int, int],
) -> list[OrderDifference]:
    found: list[OrderDifference] = []
    try:
        response = await client.get(f"{order_service_url.rstrip('/')}/api/v1/orders/{order_id}")
    except httpx.HTTPError as exc:
        return [OrderDifference(order_id, "order service unreachable", None, str(exc))]
    if response.status_code != 200:
        found.append(OrderDifference(order_id, "order", "paid", f"HTTP {response.status_code}"))
    else:
        order = response.json()
        theirs_promoter = int(order["promoter_id"]) if order.get("promoter_id") else None
        for what, ours, theirs in (
            ("promoter_id", promoter_id, theirs_promoter),
            ("paid_amount", paid_amount, int(order.get("paid_amount") or 0)),
            ("refunded_amount", refunded_amount, int(order.get("refunded_amount") or 0)),
        ):
            if ours != theirs:
                found.append(OrderDifference(order_id, what, ours, theirs))
    try:
        response = await client.get(
            f"{commission_service_url.rstrip('/')}/api/v1/orders/{order_id}/commissions"
        )
    except httpx.HTTPError as exc:
        return [*found, OrderDifference(order_id, "commission service unreachable", None, str(exc))]
    if response.status_code != 200:
        return [
            *found,
            OrderDifference(order_id, "commissions", "known", f"HTTP {response.status_code}"),
        ]
    theirs_net: dict[int, int] = {}
    for record in response.json().get("items", []):
        # A record's amount is what it is worth now (recomputed after refunds); void and
        # wholly reversed records are worth nothing.
        if record.get("status") in ("void", "reversed"):
            continue
        beneficiary = int(record["beneficiary_id"])
        theirs_net[beneficiary] = theirs_net.get(beneficiary, 0) + int(record["amount"])
    for beneficiary in sorted(set(theirs_net) | set(net_commissions)):
        ours, theirs = net_commissions.get(beneficiary, 0), theirs_net.get(beneficiary, 0)
        if ours != theirs:
            found.append(OrderDifference(order_id, f"commission of {beneficiary}", ours, theirs))
    return found


async def _run(args: argparse.Namespace) -> int:
    settings = ServiceSettings(service_name="stats")
    db = Database(settings.database_url, settings.replica_url, settings.shard_map)
    redis = connect(settings.redis_url)
    stores = StatsStores(
        redis,
        Cache(redis, f"{settings.redis_key_prefix}stats:"),
        settings.redis_key_prefix,
        settings.zone,
    )
    first, last = args.first, args.last
    try:
        rows = await compare_rows(db, first, last)
        for d in rows:
            print(
                f"row promoter={d.promoter_id} day={d.day} {d.figure}: "
                f"recorded {d.recorded}, recomputed {d.recomputed}"
            )
        if rows and args.repair:
            print(f"repaired {await repair(db, stores, rows, first, last)} rows")
        orders: list[OrderDifference] = []
        if not args.no_services:
            orders = await compare_with_services(
                db,
                first,
                last,
                settings.order_service_url,
                settings.commission_service_url,
                internal_headers(settings),
            )
            for o in orders:
                print(f"order={o.order_id} {o.what}: stats {o.ours!r}, service {o.theirs!r}")
        print(f"{len(rows)} row differences, {len(orders)} order differences, {first}..{last}")
        return 1 if rows or orders else 0
    finally:
        await redis.aclose()
        await db.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.stats.reconcile")
    parser.add_argument("--from", dest="first", type=date.fromisoformat, required=True)
    parser.add_argument("--to", dest="last", type=date.fromisoformat, required=True)
    parser.add_argument("--repair", action="store_true", help="rewrite rows that differ")
    parser.add_argument(
        "--no-services", action="store_true", help="skip the order/commission service check"
    )
    return asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
