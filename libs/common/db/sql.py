"""Dialect-neutral statements that run on SQLite, MySQL 8 and MariaDB 10.11 alike."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Insert, Table
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable

from libs.common.db.prepared import Prepared

# Built once per table, dialect and columns (a plain INSERT is the same on every dialect):
# building and compiling the statement costs more than running it.
_PREPARED: dict[tuple[Any, ...], Prepared] = {}


def _prepared(key: tuple[Any, ...], build: Callable[[], Executable]) -> Prepared:
    prepared = _PREPARED.get(key)
    if prepared is None:
        prepared = _PREPARED[key] = Prepared(build())
    return prepared


async def insert_rows(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """Insert rows (all with the same columns); a key collision is an error."""
    if not rows:
        return 0
    return await _prepared(("insert", table), table.insert).execute(conn, rows)


async def insert_ignore(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> int:
    """Insert rows, skipping those that collide with a unique key; returns rows inserted.

    (MySQL counts only inserted rows for ``INSERT IGNORE``; SQLite ``ON CONFLICT DO NOTHING``
    likewise.) Never ``INSERT … RETURNING``: MySQL 8 lacks it.
    """
    if not rows:
        return 0
    dialect = conn.dialect.name

    def build() -> Insert:
        if dialect == "sqlite":
            return sqlite_insert(table).on_conflict_do_nothing()
        return mysql_insert(table).prefix_with("IGNORE")

    return await _prepared(("ignore", table, dialect), build).execute(conn, rows)


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
    dialect = conn.dialect.name

    def build() -> Any:
        if dialect == "sqlite":
            sqlite_statement = sqlite_insert(table)
            return sqlite_statement.on_conflict_do_update(
                index_elements=list(key_columns),
                set_={c: new_value(c, sqlite_statement.excluded[c]) for c in columns},
            )
        mysql_statement = mysql_insert(table)
        return mysql_statement.on_duplicate_key_update(
            {c: new_value(c, mysql_statement.inserted[c]) for c in columns}
        )

    key = (mode, table, dialect, tuple(key_columns), tuple(columns))
    await _prepared(key, build).execute(conn, rows)


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
