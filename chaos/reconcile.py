"""After the run: does what the system holds equal what should have happened?

Each check recomputes from an independent source and lists every difference:

- ``orders``: every order the driver paid is paid, its attribution snapshot is the chain the
  driver bound, its refunded amount is what the driver's accepted refunds add up to; and it
  has exactly its commission lines, recomputed from the rules the harness set and the order's
  items (floor(base × rate / 10000), capped), once accrued on the paid amount and now on what
  is still paid, the difference reversed. An unpaid order has none.
- ``ledger``: per order, the accrual and reversal transfers equal the records; the ledger
  nets to zero; ``GET /api/v1/ledger/verify`` (hash chains, balances = entries) is clean.
- ``withdrawals``: the fake provider's bills against the withdrawals: no withdrawal has two
  successful payouts, a paid one has exactly one of its net amount, an unpaid one none; the
  promoter's withdrawing / paid-out balances equal their withdrawals.
- ``stats``: each promoter's order count, order amount (net of refunds) and commission over
  the run equal a recomputation from the orders and records; plus the services' own
  reconciliations (``services.stats.reconcile``, ``services.commission.reconciliation``).
- ``dead_letters``: a message that ended in a DLQ was not applied: with good data, none should.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from chaos.client import Api
from chaos.traffic import PLATFORM, SKUS, Traffic
from deploy.local.stack import SERVICES
from libs.common.db.engine import Database
from libs.common.messaging.consumer import dead_letters, inbox
from libs.common.messaging.outbox import outbox, unpublished
from services.commission.models import tables_for

Difference = str


def expected_line(paid: int, rate_bps: int, cap: int | None) -> int:
    """ARCHITECTURE §3: floor(base × rate / 10000), then min(line, cap)."""
    line = paid * rate_bps // 10_000
    return line if cap is None else min(line, cap)


class Reconciler:
    def __init__(
        self,
        api: Api,
        traffic: Traffic,
        db_url: Callable[[str], str],
        service_env: Callable[[str], dict[str, str]],
        fake_wechat: Any,
        zone: str = "Asia/Shanghai",
    ) -> None:
        self.api = api
        self.traffic = traffic
        self.db_url = db_url
        self.service_env = service_env
        self.fake = fake_wechat
        self.zone = ZoneInfo(zone)
        self.facts: dict[str, Any] = {}

    # -- waiting for quiet -----------------------------------------------------------------
    async def backlog(self) -> dict[str, int]:
        """Unpublished outbox rows per service."""
        found = {}
        for service in SERVICES:
            db = Database(self.db_url(service))
            try:
                async with db.read(may_lag=False) as conn:
                    found[service] = int(
                        await conn.scalar(
                            select(func.count()).select_from(outbox).where(unpublished())
                        )
                        or 0
                    )
            finally:
                await db.dispose()
        return found

    async def counts(self) -> dict[str, dict[str, int]]:
        """Outbox rows, inbox rows (events applied) and open dead letters per service."""
        found: dict[str, dict[str, int]] = {}
        for service in SERVICES:
            db = Database(self.db_url(service))
            try:
                async with db.read(may_lag=False) as conn:
                    found[service] = {
                        "published": int(
                            await conn.scalar(select(func.count()).select_from(outbox)) or 0
                        ),
                        "applied": int(
                            await conn.scalar(select(func.count()).select_from(inbox)) or 0
                        ),
                        "dead_letters": int(
                            await conn.scalar(
                                select(func.count())
                                .select_from(dead_letters)
                                .where(dead_letters.c.replayed_at.is_(None))
                            )
                            or 0
                        ),
                    }
            finally:
                await db.dispose()
        return found

    # -- the checks ------------------------------------------------------------------------
    async def run(self) -> list[Difference]:
        differences: list[Difference] = []
        orders = await self._orders(differences)
        records = {oid: recs for oid, (_, recs) in orders.items()}
        await self._ledger(records, differences)
        await self._withdrawals(differences)
        await self._stats(orders, differences)
        await self._dead_letters(differences)
        await self._service_reconciliations(differences)
        return differences

    async def _orders(
        self, differences: list[Difference]
    ) -> dict[str, tuple[dict[str, Any], list[dict[str, Any]]]]:
        found: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]] = {}
        for order in self.traffic.orders:
            response = await self.api.call(
                "GET", f"/api/v1/orders/by-number/{PLATFORM}/{order.order_no}", budget=60
            )
            if response is None:
                raise RuntimeError(f"cannot read order {order.order_no}")
            if response.status_code == 404:
                if order.id is not None:
                    differences.append(f"orders: {order.order_no} was created but is gone")
                continue
            o = response.json()
            oid = str(o["id"])
            recs = (await self.api.get_json(f"/api/v1/orders/{oid}/commissions"))["items"]
            found[oid] = (o, recs)
            where = f"orders: {order.order_no} ({oid})"
            paid = o["paid_at"] is not None
            if order.paid and o["status"] not in ("paid", "completed"):
                differences.append(f"{where}: paid by the driver, status {o['status']}")
            if order.completed and o["status"] != "completed":
                differences.append(f"{where}: completed by the driver, status {o['status']}")
            refunded = sum(int(i["refunded_amount"]) for i in o["items"])
            if not order.uncertain and refunded != order.refunded:
                differences.append(
                    f"{where}: refunded {refunded}, the driver's accepted refunds {order.refunded}"
                )
            chain = [
                str(b["user_id"]) for b in sorted(o["beneficiaries"], key=lambda b: b["level"])
            ]
            if chain != order.chain:
                differences.append(f"{where}: beneficiaries {chain}, bound {order.chain}")
            expected: dict[tuple[str, int], tuple[str, int, int]] = {}
            if paid:
                for item in o["items"]:
                    levels = SKUS[item["sku"]][1]
                    for b in o["beneficiaries"]:
                        if b["level"] not in levels:
                            continue
                        rate, cap = levels[b["level"]]
                        accrued = expected_line(int(item["paid_amount"]), rate, cap)
                        now = expected_line(
                            int(item["paid_amount"]) - int(item["refunded_amount"]), rate, cap
                        )
                        if accrued > 0:
                            expected[(str(item["id"]), b["level"])] = (
                                str(b["user_id"]),
                                accrued,
                                now,
                            )
            actual: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
            for r in recs:
                actual[(str(r["item_id"]), int(r["level"]))].append(r)
            for key in sorted(set(expected) | set(actual)):
                lines = actual.get(key, [])
                if key not in expected:
                    differences.append(f"{where}: unexpected commission line {key}: {lines}")
                    continue
                beneficiary, accrued, now = expected[key]
                if len(lines) != 1:
                    differences.append(
                        f"{where}: item {key[0]} level {key[1]} has {len(lines)} lines, wants 1"
                    )
                    continue
                r = lines[0]
                got = (str(r["beneficiary_id"]), r["accrued_amount"], r["amount"])
                if got != (beneficiary, accrued, now) or r["reversed_amount"] != accrued - now:
                    differences.append(
                        f"{where}: item {key[0]} level {key[1]}: (beneficiary, accrued, amount, "
                        f"reversed) {(*got, r['reversed_amount'])}, recomputed "
                        f"{(beneficiary, accrued, now, accrued - now)}"
                    )
                if now == 0 and r["status"] != "reversed":
                    differences.append(f"{where}: line {key} refunded wholly, status {r['status']}")
        self.facts["orders"] = len(found)
        self.facts["orders_paid"] = sum(1 for o, _ in found.values() if o["paid_at"])
        self.facts["commission_lines"] = sum(len(r) for _, r in found.values())
        return found

    async def _ledger(
        self, records: dict[str, list[dict[str, Any]]], differences: list[Difference]
    ) -> None:
        tables = tables_for(self.zone.key)
        by_order: dict[tuple[str, str], int] = defaultdict(int)
        balances: dict[str, int] = defaultdict(int)
        db = Database(self.db_url("commission"))
        try:
            async with db.read(may_lag=False) as conn:
                for month in await tables.flows.existing_months(conn):
                    table = tables.flows.for_month(month)
                    rows = await conn.execute(
                        select(
                            table.c.order_id,
                            table.c.kind,
                            table.c.debit_account,
                            table.c.credit_account,
                            table.c.amount,
                        )
                    )
                    for order_id, kind, debit, credit, amount in rows:
                        balances[debit] -= amount
                        balances[credit] += amount
                        if order_id is not None:
                            by_order[(str(order_id), kind)] += amount
        finally:
            await db.dispose()
        if sum(balances.values()) != 0:
            differences.append(f"ledger: accounts net to {sum(balances.values())}, not 0")
        for oid, recs in records.items():
            accrued = sum(int(r["accrued_amount"]) for r in recs)
            reversed_ = sum(int(r["reversed_amount"]) for r in recs)
            if by_order.get((oid, "accrue"), 0) != accrued:
                differences.append(
                    f"ledger: order {oid} accrual transfers {by_order.get((oid, 'accrue'), 0)}, "
                    f"records {accrued}"
                )
            if by_order.get((oid, "reverse"), 0) != reversed_:
                differences.append(
                    f"ledger: order {oid} reversal transfers {by_order.get((oid, 'reverse'), 0)}, "
                    f"records reversed {reversed_}"
                )
        verify = await self.api.get_json("/api/v1/ledger/verify")
        if not verify["ok"]:
            differences.append(
                f"ledger: verify not ok: chains {verify['broken_chains'][:5]}, "
                f"balances {verify['balance_mismatches'][:5]}"
            )
        self.facts["transfers"] = verify["transfers_checked"]

    async def _withdrawals(self, differences: list[Difference]) -> None:
        bills = list(self.fake.bills.values()) if self.fake is not None else []
        matched: set[str] = set()
        count = 0
        for promoter in self.traffic.promoters:
            rows: list[dict[str, Any]] = []
            cursor = None
            while True:
                params = {"promoter_id": promoter.id, "limit": 200}
                if cursor:
                    params["cursor"] = cursor
                page = await self.api.get_json("/api/v1/withdrawals", **params)
                rows.extend(page["items"])
                cursor = page.get("next_cursor")
                if not cursor:
                    break
            count += len(rows)
            withdrawing = paid_out = 0
            for w in rows:
                mine = [b for b in bills if b["out_bill_no"].startswith(f"W{w['id']}A")]
                matched.update(b["out_bill_no"] for b in mine)
                successes = [b for b in mine if b["state"] == "SUCCESS"]
                where = f"withdrawals: {w['id']} ({w['status']})"
                if len(successes) > 1:
                    differences.append(f"{where}: PAID {len(successes)} TIMES: {successes}")
                if w["status"] == "paid":
                    paid_out += int(w["net_amount"])
                    if len(successes) == 1 and successes[0]["transfer_amount"] != w["net_amount"]:
                        differences.append(
                            f"{where}: provider paid {successes[0]['transfer_amount']}, "
                            f"net {w['net_amount']}"
                        )
                    if not successes:
                        differences.append(f"{where}: paid without a successful payout")
                elif successes:
                    differences.append(f"{where}: the provider paid it, the status says not")
                if w["status"] in ("pending", "approved", "failed"):
                    withdrawing += int(w["amount"])
            account = await self.api.get_json(f"/api/v1/accounts/{promoter.id}")
            if (account["withdrawing_amount"], account["paid_out_amount"]) != (
                withdrawing,
                paid_out,
            ):
                differences.append(
                    f"withdrawals: promoter {promoter.id} withdrawing/paid out "
                    f"{account['withdrawing_amount']}/{account['paid_out_amount']}, from the "
                    f"withdrawals {withdrawing}/{paid_out}"
                )
            for bucket in ("frozen_amount", "available_amount"):
                if account[bucket] < 0 and bucket == "frozen_amount":
                    differences.append(f"withdrawals: promoter {promoter.id} {bucket} < 0")
        for bill in bills:
            if bill["out_bill_no"] not in matched and bill["state"] == "SUCCESS":
                differences.append(f"withdrawals: a payout of no known withdrawal: {bill}")
        self.facts["withdrawals"] = count
        self.facts["payouts_paid"] = sum(1 for b in bills if b["state"] == "SUCCESS")

    def _days(self) -> tuple[date, date]:
        today = datetime.now(self.zone).date()
        return today - timedelta(days=1), today + timedelta(days=1)

    async def _stats(
        self,
        orders: dict[str, tuple[dict[str, Any], list[dict[str, Any]]]],
        differences: list[Difference],
    ) -> None:
        expected: dict[str, dict[str, int]] = defaultdict(
            lambda: {"order_count": 0, "order_amount": 0, "commission_amount": 0}
        )
        for o, recs in orders.values():
            if o["paid_at"] is not None and o["promoter_id"] is not None:
                figures = expected[str(o["promoter_id"])]
                figures["order_count"] += 1
                figures["order_amount"] += sum(
                    int(i["paid_amount"]) - int(i["refunded_amount"]) for i in o["items"]
                )
            for r in recs:
                expected[str(r["beneficiary_id"])]["commission_amount"] += int(r["amount"])
        first, last = self._days()
        for promoter in self.traffic.promoters:
            view = await self.api.get_json(
                f"/api/v1/stats/promoters/{promoter.id}", **{"from": str(first), "to": str(last)}
            )
            got = {
                figure: sum(int(day[figure]) for day in view["items"])
                for figure in ("order_count", "order_amount", "commission_amount")
            }
            want = expected[promoter.id]
            if got != want:
                differences.append(f"stats: promoter {promoter.id} shows {got}, recomputed {want}")

    async def _dead_letters(self, differences: list[Difference]) -> None:
        for service in SERVICES:
            db = Database(self.db_url(service))
            try:
                async with db.read(may_lag=False) as conn:
                    rows = await conn.execute(
                        select(
                            dead_letters.c.consumer, dead_letters.c.event_id, dead_letters.c.reason
                        )
                        .where(dead_letters.c.replayed_at.is_(None))
                        .limit(20)
                    )
                    for consumer, event_id, reason in rows:
                        differences.append(
                            f"dead_letters: {consumer} dead-lettered {event_id}: {reason[:300]}"
                        )
            finally:
                await db.dispose()

    async def _service_reconciliations(self, differences: list[Difference]) -> None:
        first, last = self._days()
        stats = await self._command(
            "stats", ["services.stats.reconcile", "--from", str(first), "--to", str(last)]
        )
        if stats.returncode != 0:
            lines = [line for line in stats.stdout.splitlines() if line.strip()]
            shown = [line for line in lines if not line.endswith(f"{first}..{last}")]
            for line in shown[:20] or lines[-1:]:
                differences.append(f"stats reconcile: {line}")
        commission = await self._command(
            "commission", ["services.commission.reconciliation", "--days", "2"]
        )
        if commission.returncode != 0:
            try:
                findings = json.loads(commission.stdout.strip().splitlines()[-1])["findings"]
            except (ValueError, KeyError, IndexError):
                findings = [commission.stdout[-500:] or commission.stderr[-500:]]
            for finding in findings[:20] or ["exit 1"]:
                differences.append(f"commission reconciliation: {finding}")

    async def _command(self, service: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.service_env(service), "TUIKE_LOG_LEVEL": "WARNING"}
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
