"""Nightly-style reconciliation: the ledger verifies, each accrued order's records agree with
the order service's snapshot (every line's base = what its item still has paid, every earner
in the order's beneficiary chain), and each promoter's daily commission (accrued − reversed,
from the ledger) equals what the stats service shows for that day.

    python -m services.commission.reconciliation [--days 1]

prints a JSON report and exits 1 when it found a difference.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
from sqlalchemy import select

from libs.common.auth import internal_headers
from libs.common.db.engine import Database
from services.commission.context import CommissionServiceSettings
from services.commission.ledger import verify
from services.commission.models import CommissionTables, commission_orders, tables_for


@dataclass
class ReconciliationReport:
    since: datetime
    until: datetime
    orders_checked: int = 0
    promoter_days_checked: int = 0
    findings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def business_day(moment: datetime, zone: ZoneInfo) -> date:
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(zone).date()


async def daily_commissions(
    db: Database, tables: CommissionTables, since: datetime, until: datetime
) -> dict[tuple[int, date], int]:
    """Accrued − reversed per promoter per business day, from the ledger."""
    totals: dict[tuple[int, date], int] = defaultdict(int)
    async with db.read(may_lag=True) as conn:
        for month in await tables.flows.existing_months(conn):
            table = tables.flows.for_month(month)
            rows = await conn.execute(
                select(table.c.promoter_id, table.c.kind, table.c.amount, table.c.created_at).where(
                    table.c.kind.in_(["accrue", "reverse"]),
                    table.c.created_at >= since,
                    table.c.created_at < until,
                )
            )
            for promoter_id, kind, amount, created_at in rows:
                sign = 1 if kind == "accrue" else -1
                totals[(int(promoter_id), business_day(created_at, tables.zone))] += sign * amount
    return totals


async def _order_findings(
    db: Database,
    tables: CommissionTables,
    orders_api: httpx.AsyncClient,
    since: datetime,
    until: datetime,
    report: ReconciliationReport,
    limit: int,
) -> None:
    async with db.read(may_lag=True) as conn:
        claimed = (
            await conn.execute(
                select(commission_orders.c.order_id, commission_orders.c.record_month)
                .where(
                    commission_orders.c.accrued_at >= since,
                    commission_orders.c.accrued_at < until,
                    commission_orders.c.record_month.is_not(None),
                )
                .limit(limit)
            )
        ).all()
        by_order: dict[int, list[Any]] = defaultdict(list)
        for order_id, month in claimed:
            table = tables.records.for_month(month)
            for row in await conn.execute(select(table).where(table.c.order_id == order_id)):
                by_order[int(order_id)].append(row._mapping)
    for order_id, _ in claimed:
        report.orders_checked += 1
        response = await orders_api.get(f"/api/v1/orders/{order_id}")
        if response.status_code == 404:
            report.findings.append({"kind": "order_missing", "order_id": str(order_id)})
            continue
        response.raise_for_status()
        order = response.json()
        items = {int(i["id"]): i for i in order.get("items", [])}
        chain = {int(b["user_id"]) for b in order.get("beneficiaries", [])}
        chain.add(int(order["buyer_user_id"]))  # level 0, self-purchase
        for record in by_order.get(int(order_id), []):
            item = items.get(int(record["item_id"]))
            if item is None:
                report.findings.append(
                    {
                        "kind": "item_missing",
                        "order_id": str(order_id),
                        "item_id": str(record["item_id"]),
                    }
                )
                continue
            still_paid = int(item["paid_amount"]) - int(item.get("refunded_amount", 0))
            if int(record["base_amount"]) != still_paid:
                report.findings.append(
                    {
                        "kind": "base_differs",
                        "order_id": str(order_id),
                        "record_id": str(record["id"]),
                        "base_amount": int(record["base_amount"]),
                        "order_still_paid_amount": still_paid,
                    }
                )
            if int(record["beneficiary_id"]) not in chain:
                report.findings.append(
                    {
                        "kind": "beneficiary_not_in_snapshot",
                        "order_id": str(order_id),
                        "record_id": str(record["id"]),
                    }
                )


async def _stats_findings(
    daily: dict[tuple[int, date], int],
    stats_api: httpx.AsyncClient,
    report: ReconciliationReport,
) -> None:
    days_by_promoter: dict[int, list[date]] = defaultdict(list)
    for promoter_id, day in daily:
        days_by_promoter[promoter_id].append(day)
    for promoter_id, days in days_by_promoter.items():
        response = await stats_api.get(
            f"/api/v1/stats/promoters/{promoter_id}",
            params={"from": min(days).isoformat(), "to": max(days).isoformat()},
        )
        response.raise_for_status()
        shown = {
            item["day"]: int(item.get("commission_amount", 0))
            for item in response.json().get("items", [])
        }
        for day in days:
            report.promoter_days_checked += 1
            expected = daily[(promoter_id, day)]
            if shown.get(day.isoformat(), 0) != expected:
                report.findings.append(
                    {
                        "kind": "stats_differ",
                        "promoter_id": str(promoter_id),
                        "day": day.isoformat(),
                        "ledger_commission_amount": expected,
                        "stats_commission_amount": shown.get(day.isoformat(), 0),
                    }
                )


async def reconcile(
    db: Database,
    tables: CommissionTables,
    orders_api: httpx.AsyncClient,
    stats_api: httpx.AsyncClient,
    since: datetime,
    until: datetime,
    limit: int = 100_000,
) -> ReconciliationReport:
    """Compare the window [since, until) (naive UTC) with the ledger, orders and stats."""
    report = ReconciliationReport(since=since, until=until)
    ledger = await verify(db, tables)
    for broken in ledger.broken_chains:
        report.findings.append({"kind": "chain_broken", **broken})
    for mismatch in ledger.balance_mismatches:
        report.findings.append({"kind": "balance_differs", **mismatch})
    for mismatch in ledger.settlement_mismatches:
        report.findings.append({"kind": "settlement_differs", **mismatch})
    await _order_findings(db, tables, orders_api, since, until, report, limit)
    await _stats_findings(await daily_commissions(db, tables, since, until), stats_api, report)
    return report


async def _main(days: int) -> int:
    settings = CommissionServiceSettings(service_name="commission")
    db = Database(settings.database_url, settings.replica_url, settings.shard_map)
    until = datetime.now(UTC).replace(tzinfo=None)
    since = until - timedelta(days=days)
    headers = internal_headers(settings)
    try:
        async with (
            httpx.AsyncClient(base_url=settings.order_service_url, headers=headers) as orders,
            httpx.AsyncClient(base_url=settings.stats_service_url, headers=headers) as stats,
        ):
            report = await reconcile(db, tables_for(settings.timezone), orders, stats, since, until)
    finally:
        await db.dispose()
    print(orjson.dumps({**asdict(report), "ok": report.ok}, default=str).decode())
    return 0 if report.ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(prog="tuike-commission-reconciliation")
    parser.add_argument("--days", type=int, default=1, help="how many days back to check")
    sys.exit(asyncio.run(_main(parser.parse_args().days)))


if __name__ == "__main__":
    main()
