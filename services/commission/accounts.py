"""A promoter's account balances (frozen, available, withdrawing, paid out): the read the
API shows, and the locked read that the ledger moves them from."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select, union_all

from libs.common.db.engine import Database, Tx
from libs.common.db.sql import insert_ignore
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


def _by_promoter(rows: Any) -> dict[int, dict[str, object]]:
    return {int(r._mapping["promoter_id"]): dict(r._mapping) for r in rows}


# Ids per UNION ALL statement when reading balance rows on SQLite.
_UNION_PARAMETERS = 2_000


def _account_columns(table: Any) -> list[Any]:
    # Everything but updated_at, which is always rewritten (and parsing it costs per row).
    return [column for column in table.c if column.name != "updated_at"]


async def _read_locked(tx: Tx, by_shard: dict[int, list[int]]) -> dict[int, dict[str, object]]:
    """The existing balance rows of these promoters (grouped by shard), locked.

    MySQL: ``SELECT … FOR UPDATE`` per shard table. SQLite has one writer (the transaction
    already holds the write lock, so nothing needs locking) and pays per statement far more
    than per row, so the shards of one database file are read in one ``UNION ALL``."""
    found: dict[int, dict[str, object]] = {}
    if not tx.db.is_sqlite:
        for shard, members in by_shard.items():
            table = accounts.for_shard(shard)
            conn = await tx.shard(shard)
            locking = (
                select(*_account_columns(table))
                .where(table.c.promoter_id.in_(members))
                .with_for_update()
            )
            found.update(_by_promoter(await conn.execute(locking)))
        return found
    by_url: dict[str, list[tuple[int, list[int]]]] = defaultdict(list)
    for shard, members in by_shard.items():
        by_url[tx.db.shard_url(shard)].append((shard, members))
    for parts in by_url.values():
        conn = await tx.shard(parts[0][0])
        selects: list[Any] = []
        size = 0
        for index, (shard, members) in enumerate(parts):
            table = accounts.for_shard(shard)
            selects.append(select(*_account_columns(table)).where(table.c.promoter_id.in_(members)))
            size += len(members)
            if size >= _UNION_PARAMETERS or index == len(parts) - 1:
                query: Any = selects[0] if len(selects) == 1 else union_all(*selects)
                found.update(_by_promoter(await conn.execute(query)))
                selects, size = [], 0
    return found


async def lock_accounts(
    tx: Tx, promoter_ids: list[int], currency: str, now: datetime
) -> dict[int, dict[str, object]]:
    """The balance rows of these promoters, locked for this transaction (created if missing:
    the insert makes a concurrent creator wait for us, then read our row)."""
    by_shard: dict[int, list[int]] = defaultdict(list)
    for promoter_id in promoter_ids:
        by_shard[shard_of(promoter_id)].append(promoter_id)
    locked = await _read_locked(tx, by_shard)
    missing: dict[int, list[int]] = defaultdict(list)
    for shard, members in by_shard.items():
        missing[shard].extend(p for p in members if p not in locked)
    missing = {shard: members for shard, members in missing.items() if members}
    for shard, members in missing.items():
        await insert_ignore(
            await tx.shard(shard),
            accounts.for_shard(shard),
            [
                {
                    "promoter_id": p,
                    "currency": currency,
                    "frozen_amount": 0,
                    "available_amount": 0,
                    "withdrawing_amount": 0,
                    "paid_out_amount": 0,
                    "chain_head": "",
                    "chain_length": 0,
                    "updated_at": now,
                }
                for p in members
            ],
        )
    if missing:
        locked.update(await _read_locked(tx, missing))
    return locked
