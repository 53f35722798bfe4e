"""The monthly tax report (CSV, for the withholding declaration) and a promoter's ledger
statement for one month."""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from typing import Any

from sqlalchemy import and_, func, select

from libs.common.errors import BadRequest
from libs.common.ids import shard_of
from libs.common.masking import mask_id_number, mask_name
from libs.common.money import round_half_up
from services.commission.ledger import BUCKETS, parse_promoter_account
from services.commission.models import accounts
from services.commission.withdrawals import tax
from services.commission.withdrawals.context import WithdrawalContext
from services.commission.withdrawals.models import withdrawals
from services.commission.withdrawals.payee import load_payee
from services.commission.withdrawals.payouts.manual import format_major, spreadsheet_safe

_MONTH = re.compile(r"^(\d{4})(0[1-9]|1[0-2])$")
TAX_REPORT_COLUMNS = (
    "promoter_id",
    "real_name",
    "id_number",
    "month",
    "withdrawal_count",
    "gross_amount",
    "taxable_amount",
    "withheld_amount",
    "gross",
    "taxable",
    "withheld",
)


def parse_month(value: str) -> str:
    """``YYYYMM`` or ``YYYY-MM`` → ``YYYYMM`` (400 otherwise)."""
    month = value.replace("-", "")
    if not _MONTH.match(month):
        raise BadRequest("a month is YYYYMM or YYYY-MM", code="request.bad_month")
    return month


async def tax_report(ctx: WithdrawalContext, month: str, *, unmasked: bool) -> str:
    """One line per promoter paid in ``month`` (business timezone) under China withholding:
    gross (the month's labor remuneration), taxable income and the tax withheld; amounts in
    fen (``*_amount``) and in yuan. Names and ID numbers masked unless ``unmasked``."""
    month = parse_month(month)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(TAX_REPORT_COLUMNS)
    async with ctx.db.read(may_lag=True) as conn:
        rows = (
            await conn.execute(
                select(
                    withdrawals.c.promoter_id,
                    func.count(),
                    func.sum(withdrawals.c.amount),
                    func.sum(withdrawals.c.tax_amount),
                )
                .where(
                    and_(
                        withdrawals.c.tax_month == month,
                        withdrawals.c.status == "paid",
                        withdrawals.c.tax_withholding == "cn_labor",
                    )
                )
                .group_by(withdrawals.c.promoter_id)
                .order_by(withdrawals.c.promoter_id)
            )
        ).all()
        for promoter_id, count, gross, withheld in rows:
            payee = await load_payee(conn, ctx.cipher, int(promoter_id))
            name = payee.real_name if payee else ""
            id_number = payee.id_number if payee else ""
            taxable = round_half_up(tax.taxable_income(int(gross)))
            writer.writerow(
                [
                    str(promoter_id),
                    spreadsheet_safe(name if unmasked else mask_name(name) or ""),
                    id_number if unmasked else mask_id_number(id_number) or "",
                    month,
                    str(count),
                    str(int(gross)),
                    str(taxable),
                    str(int(withheld)),
                    format_major(int(gross)),
                    format_major(taxable),
                    format_major(int(withheld)),
                ]
            )
    return buffer.getvalue()


async def statement(ctx: WithdrawalContext, promoter_id: int, month: str) -> dict[str, Any]:
    """The promoter's ledger transfers of ``month`` in chain order, each with its effect on
    the promoter's accounts, and the opening and closing balance of each account (closing =
    the balance row now minus what later months moved)."""
    month = parse_month(month)
    tables = ctx.tables
    entries: list[dict[str, Any]] = []
    later: dict[str, int] = defaultdict(int)
    async with ctx.db.read(may_lag=False) as conn:
        months = await tables.flows.existing_months(conn)
        for each in months:
            if each < month:
                continue
            table = tables.flows.for_month(each)
            flows = [
                dict(r._mapping)
                for r in await conn.execute(
                    select(table)
                    .where(table.c.promoter_id == promoter_id)
                    .order_by(table.c.chain_seq)
                )
            ]
            for flow in flows:
                effects = _effects(flow, promoter_id)
                if each == month:
                    entries.append(
                        {
                            "id": flow["id"],
                            "created_at": flow["created_at"],
                            "kind": flow["kind"],
                            "idempotency_key": flow["idempotency_key"],
                            "debit_account": flow["debit_account"],
                            "credit_account": flow["credit_account"],
                            "amount": flow["amount"],
                            "currency": flow["currency"],
                            "order_id": flow["order_id"],
                            "effects": effects,
                        }
                    )
                else:
                    for bucket, delta in effects.items():
                        later[bucket] += delta
    async with ctx.db.read_shard(shard_of(promoter_id), may_lag=False) as conn:
        table = accounts.for_id(promoter_id)
        row = (await conn.execute(select(table).where(table.c.promoter_id == promoter_id))).first()
    now = {b: int(row._mapping[f"{b}_amount"]) if row else 0 for b in BUCKETS}
    closing = {b: now[b] - later[b] for b in BUCKETS}
    moved = {b: sum(e["effects"].get(b, 0) for e in entries) for b in BUCKETS}
    opening = {b: closing[b] - moved[b] for b in BUCKETS}
    return {
        "promoter_id": promoter_id,
        "month": month,
        "currency": str(row._mapping["currency"]) if row else "CNY",
        "opening": {f"{b}_amount": v for b, v in opening.items()},
        "closing": {f"{b}_amount": v for b, v in closing.items()},
        "entries": entries,
    }


def _effects(flow: dict[str, Any], promoter_id: int) -> dict[str, int]:
    effects: dict[str, int] = {}
    for account, sign in ((flow["credit_account"], 1), (flow["debit_account"], -1)):
        parsed = parse_promoter_account(str(account))
        if parsed is not None and parsed[0] == promoter_id:
            effects[parsed[1]] = effects.get(parsed[1], 0) + sign * int(flow["amount"])
    return effects
