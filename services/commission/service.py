"""The commission service's use cases as the API calls them: each opens its transaction,
calls the use-case modules and returns plain data (no HTTP here)."""

from __future__ import annotations

from typing import Any

from libs.common import audit
from libs.common.auth import Caller
from libs.common.db.engine import Database, Tx
from libs.common.messaging.outbox import utcnow
from libs.common.metrics import (
    LEDGER_VERIFY_FAILURES,
    LEDGER_VERIFY_RUNS,
    SETTLED_AMOUNT,
    SETTLED_RECORDS,
)
from services.commission import ledger, rules
from services.commission.compliance import LevelTerms
from services.commission.context import CommissionContext, naive_utc
from services.commission.schemas import RuleIn
from services.commission.settlement import SettleResult, settle_due_now


def rule_view(rule: rules.Rule, now: Any = None) -> dict[str, Any]:
    now = now or utcnow()
    return {
        "id": rule.id,
        "scope": rule.scope,
        "key": rule.key or None,
        "version": rule.version,
        "levels": [t.__dict__ for t in rule.levels],
        "effective_from": rule.effective_from,
        "created_at": rule.created_at,
        "deactivated_at": rule.deactivated_at,
        "active": rule.deactivated_at is None or rule.deactivated_at > now,
    }


async def create_rule(
    db: Database, ctx: CommissionContext, caller: Caller, body: RuleIn
) -> dict[str, Any]:
    terms = [LevelTerms(**level.model_dump()) for level in body.levels]

    async def work(tx: Tx) -> dict[str, Any]:
        rule = await rules.create_rule(
            tx, ctx.ids, body.scope, body.key, terms, naive_utc(body.effective_from)
        )
        view = rule_view(rule)
        await audit.record(
            await tx.main(),
            caller,
            "commission.rule.create",
            "commission_rule",
            rule.id,
            after=view,
        )
        return view

    return await db.run(work)


async def list_rules(db: Database, include_history: bool) -> list[dict[str, Any]]:
    """Rules in force now and those scheduled to start; with history, every version."""
    async with db.read(may_lag=False) as conn:
        every = await rules.all_rules(conn)
    now = utcnow()
    if include_history:
        chosen = every
    else:
        chosen = rules.RuleBook(every).in_force_or_scheduled(now)
    order = {scope: i for i, scope in enumerate(rules.SCOPES)}
    chosen = sorted(chosen, key=lambda r: (order[r.scope], r.key, r.version))
    return [rule_view(r, now) for r in chosen]


async def deactivate_rule(db: Database, caller: Caller, rule_id: int) -> dict[str, Any]:
    async def work(tx: Tx) -> dict[str, Any]:
        rule = await rules.deactivate_rule(tx, rule_id)
        view = rule_view(rule)
        await audit.record(
            await tx.main(),
            caller,
            "commission.rule.deactivate",
            "commission_rule",
            rule_id,
            after=view,
        )
        return view

    return await db.run(work)


async def change_hold(
    db: Database, ctx: CommissionContext, caller: Caller, record_id: int, hold: bool
) -> dict[str, Any]:
    """Risk review: hold a frozen record or release it (audited)."""
    from services.commission.review import change_hold as change

    async def work(tx: Tx) -> dict[str, Any]:
        before, after = await change(tx, ctx, record_id, hold)
        await audit.record(
            await tx.main(),
            caller,
            "commission.hold" if hold else "commission.release",
            "commission_record",
            record_id,
            before={"status": before["status"]},
            after={"status": after["status"]},
        )
        return after

    return await db.run(work)


def count_settled(result: SettleResult, path: str, currency: str = "CNY") -> None:
    SETTLED_RECORDS.labels(path).inc(result.records)
    SETTLED_AMOUNT.labels(currency).inc(result.amount)


async def run_settlement(
    db: Database,
    ctx: CommissionContext,
    caller: Caller,
    batch_size: int = 500,
    max_batches: int = 200,
) -> SettleResult:
    """Settle everything due now, in bounded batches (each its own transaction, so a crash
    keeps what was done and a rerun resumes)."""
    total = SettleResult()
    for _ in range(max_batches):
        result = await ledger.run_guarded(
            db, lambda tx: settle_due_now(tx, ctx, utcnow(), batch_size)
        )
        count_settled(result, "manual")
        total.add(result)
        if result.orders < batch_size:
            break

    async def note(tx: Tx) -> None:
        await audit.record(
            await tx.main(),
            caller,
            "commission.settlement.run",
            "settlement",
            "due",
            after={"orders": total.orders, "records": total.records, "amount": total.amount},
        )

    await db.run(note)
    return total


async def verify_ledger(db: Database, ctx: CommissionContext) -> ledger.VerifyReport:
    report = await ledger.verify(db, ctx.tables)
    LEDGER_VERIFY_RUNS.labels("ok" if report.ok else "failed").inc()
    for _ in report.broken_chains:
        LEDGER_VERIFY_FAILURES.labels("chain_broken").inc()
    for _ in report.balance_mismatches:
        LEDGER_VERIFY_FAILURES.labels("unbalanced").inc()
    return report
