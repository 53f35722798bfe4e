"""Reads that touch every shard (a promoter's children, a phone lookup)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Select, select, union_all

from libs.common.db.engine import Database
from libs.common.db.prepared import Prepared


async def _merged(
    db: Database,
    from_database: Callable[[list[int]], Awaitable[list[dict[str, Any]]]],
    order_key: str,
) -> list[dict[str, Any]]:
    """``from_database(shards)`` for each physical database's shards, concurrently; the rows
    merged and sorted by ``order_key``."""
    groups = list(db.shards_by_url().values())
    found = [row for rows in await asyncio.gather(*map(from_database, groups)) for row in rows]
    found.sort(key=lambda row: row[order_key])
    return found


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

    return await _merged(db, from_database, order_key)


_PREPARED: dict[tuple[str, tuple[int, ...]], Prepared] = {}


async def across_shards_prepared(
    db: Database,
    name: str,
    query_of: Callable[[int], Select[Any]],
    params: dict[str, Any],
    order_key: str,
) -> list[dict[str, Any]]:
    """``across_shards`` for a query whose every value is a named ``bindparam``, run with
    ``params``: each database's UNION ALL is built and compiled once per ``name`` (building it
    anew cost a children page more than running it: sixteen subqueries, each with its column
    collections and cache key)."""

    async def from_database(shards: list[int]) -> list[dict[str, Any]]:
        key = (name, tuple(shards))
        statement = _PREPARED.get(key)
        if statement is None:
            parts = [select(*query_of(shard).subquery().c) for shard in shards]
            statement = _PREPARED[key] = Prepared(
                parts[0] if len(parts) == 1 else union_all(*parts)
            )
        async with db.read_shard(shards[0]) as conn:
            return await statement.rows(conn, params)

    return await _merged(db, from_database, order_key)
