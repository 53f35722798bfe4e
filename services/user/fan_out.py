"""Reads that touch every shard (a promoter's children, a phone lookup)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy import Select, select, union_all

from libs.common.db.engine import Database


async def across_shards(
    db: Database, query_of: Callable[[int], Select[Any]], order_key: str
) -> list[dict[str, Any]]:
    """Run ``query_of(shard)`` on all sixteen shards: one UNION ALL per physical database
    (each part ordered and limited on its own), the databases concurrently; the rows come
    back merged and sorted by ``order_key``. A caller that pages takes its page from the
    front, since every part already holds its own first rows."""

    async def from_database(shards: list[int]) -> list[dict[str, Any]]:
        parts = [select(*query_of(shard).subquery().c) for shard in shards]
        async with db.read_shard(shards[0]) as conn:
            rows = await conn.execute(union_all(*parts))
            return [dict(row) for row in rows.mappings()]

    groups = list(db.shards_by_url().values())
    found = [row for rows in await asyncio.gather(*map(from_database, groups)) for row in rows]
    found.sort(key=lambda row: row[order_key])
    return found
