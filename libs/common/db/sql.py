"""Dialect-neutral statements that run on SQLite, MySQL 8 and MariaDB 10.11 alike."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Insert, Table
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.prepared import Prepared

# Built once per table, dialect and columns: building and compiling the statement costs more
# than running it.
_PREPARED: dict[tuple[Any, ...], Prepared] = {}


async def insert_rows(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """Insert rows (all with the same columns); a key collision is an error."""
    if not rows:
        return 0
    key = ("insert", table, conn.dialect.name)
    prepared = _PREPARED.get(key)
    if prepared is None:
        prepared = _PREPARED[key] = Prepared(table.insert())
    return await prepared.execute(conn, rows)


async def insert_ignore(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """Insert rows, skipping those that collide with a unique key; returns rows inserted.

    (MySQL counts only inserted rows for ``INSERT IGNORE``; SQLite ``ON CONFLICT DO NOTHING``
    likewise.) Never ``INSERT … RETURNING``: MySQL 8 lacks it.
    """
    if not rows:
        return 0
    key = ("ignore", table, conn.dialect.name)
    prepared = _PREPARED.get(key)
    if prepared is None:
        statement: Insert
        if conn.dialect.name == "sqlite":
            statement = sqlite_insert(table).on_conflict_do_nothing()
        else:
            statement = mysql_insert(table).prefix_with("IGNORE")
        prepared = _PREPARED[key] = Prepared(statement)
    return await prepared.execute(conn, rows)


async def _upsert(
    conn: AsyncConnection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    key_columns: Sequence[str],
    mode: str,
    new_value: Callable[[str, Any], Any],
    columns: Sequence[str],
) -> None:
    """Insert rows; on a key collision set each of ``columns`` to
    ``new_value(column, incoming)``, ``incoming`` being the colliding row's value."""
    if not rows:
        return
    key = (mode, table, conn.dialect.name, tuple(key_columns), tuple(columns))
    prepared = _PREPARED.get(key)
    if prepared is None:
        if conn.dialect.name == "sqlite":
            sqlite_statement = sqlite_insert(table)
            statement: Any = sqlite_statement.on_conflict_do_update(
                index_elements=list(key_columns),
                set_={c: new_value(c, sqlite_statement.excluded[c]) for c in columns},
            )
        else:
            mysql_statement = mysql_insert(table)
            statement = mysql_statement.on_duplicate_key_update(
                {c: new_value(c, mysql_statement.inserted[c]) for c in columns}
            )
        prepared = _PREPARED[key] = Prepared(statement)
    await prepared.execute(conn, rows)


async def upsert_add(
    conn: AsyncConnection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    key_columns: Sequence[str],
    add_columns: Sequence[str],
) -> None:
    """Insert rows, or add their ``add_columns`` to the row that already has the same key."""
    await _upsert(
        conn,
        table,
        rows,
        key_columns,
        "add",
        lambda c, incoming: table.c[c] + incoming,
        add_columns,
    )


async def upsert_replace(
    conn: AsyncConnection,
    table: Table,
    rows: Sequence[dict[str, Any]],
    key_columns: Sequence[str],
    replace_columns: Sequence[str],
) -> None:
    """Insert rows, or overwrite ``replace_columns`` of the row with the same key."""
    await _upsert(
        conn, table, rows, key_columns, "replace", lambda _c, incoming: incoming, replace_columns
    )
