"""Global index tables: values unique across shards (``(platform, external_id)`` → user id,
promoter code → user id, ``(platform, order_no)`` → order id).

The index row is the claim: written first, in the same transaction as the owning row where
they share a database; where they don't, a retry finds the claim and resolves to its owner.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import BigInteger, Column, MetaData, String, Table, bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.prepared import Prepared
from libs.common.db.sql import insert_ignore

global_index_metadata = MetaData()
global_index = Table(
    "global_index",
    global_index_metadata,
    Column("kind", String(32), primary_key=True),
    Column("value", String(191), primary_key=True),
    Column("entity_id", BigInteger, nullable=False),
)


async def claim(conn: AsyncConnection, kind: str, value: str, entity_id: int) -> int:
    """Claim ``value`` for ``entity_id``; returns the owner, which is an earlier claimant's id
    when the value was already taken (the caller then knows it lost)."""
    inserted = await insert_ignore(
        conn, global_index, [{"kind": kind, "value": value, "entity_id": entity_id}]
    )
    if inserted:
        return entity_id
    owner = await lookup(conn, kind, value)
    if owner is None:  # pragma: no cover - only if the row vanished in between
        raise RuntimeError(f"global index {kind}:{value} neither inserted nor found")
    return owner


async def lookup(conn: AsyncConnection, kind: str, value: str) -> int | None:
    row = await conn.execute(
        select(global_index.c.entity_id).where(
            global_index.c.kind == kind, global_index.c.value == value
        )
    )
    found = row.scalar_one_or_none()
    return int(found) if found is not None else None


_LOOKUP_MANY = Prepared(
    select(global_index.c.value, global_index.c.entity_id).where(
        global_index.c.kind == bindparam("kind"),
        global_index.c.value.in_(bindparam("values", expanding=True)),
    )
)


async def lookup_many(conn: AsyncConnection, kind: str, values: Iterable[str]) -> dict[str, int]:
    """The owners of many values of one kind in one statement (values not found are absent)."""
    wanted = sorted(set(values))
    if not wanted:
        return {}
    rows = await _LOOKUP_MANY.rows(conn, {"kind": kind, "values": wanted})
    return {str(row["value"]): int(row["entity_id"]) for row in rows}
