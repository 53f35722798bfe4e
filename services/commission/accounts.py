"""A promoter's account balances (frozen, available, withdrawing, paid out)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from libs.common.db.engine import Database
from libs.common.ids import shard_of
from services.commission.models import accounts


async def account_balances(db: Database, promoter_id: int) -> dict[str, Any]:
    """Balances read from the primary (they decide money); all zero before any entry."""
    table = accounts.for_id(promoter_id)
    async with db.read_shard(shard_of(promoter_id), may_lag=False) as conn:
        row = (await conn.execute(select(table).where(table.c.promoter_id == promoter_id))).first()
    if row is None:
        return {
            "promoter_id": promoter_id,
            "frozen_amount": 0,
            "available_amount": 0,
            "withdrawing_amount": 0,
            "paid_out_amount": 0,
            "currency": "CNY",
        }
    mapping = row._mapping
    return {
        "promoter_id": promoter_id,
        "frozen_amount": int(mapping["frozen_amount"]),
        "available_amount": int(mapping["available_amount"]),
        "withdrawing_amount": int(mapping["withdrawing_amount"]),
        "paid_out_amount": int(mapping["paid_out_amount"]),
        "currency": mapping["currency"],
    }
