"""Statements compiled once and, on SQLite, run straight on the sqlite3 connection.

SQLAlchemy spends ~80 µs of Python on each statement it executes (cache key, execution
context, result set-up) where the statement itself, on an inline SQLite connection
(``inline_sqlite``), takes 2-20 µs. A hot path that runs a dozen statements per
transaction (a batch of binds, the outbox) spends most of its time there. A ``Prepared``
statement is compiled by SQLAlchemy once per dialect, with SQLAlchemy's own type conversions
for parameters and results, and then run on sqlite3 directly; on any other driver it is
executed through SQLAlchemy as usual. Same SQL, same values, same errors (wrapped as
SQLAlchemy wraps them) either way (docs/decisions/0105-inline-sqlite.md).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement, Executable

from libs.common.db.inline_sqlite import InlineConnection

_EXPANDING = re.compile(r"__\[POSTCOMPILE_(\w+)\]")

Params = Mapping[str, Any]
Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Compiled:
    pieces: list[str]  # the SQL split around expanding parameters (len = expanding + 1)
    names: list[str]  # parameter names in placeholder order
    expanding: frozenset[str]
    bind_processors: dict[str, Callable[[Any], Any]]
    keys: list[str]  # result column keys
    result_processors: list[Processor]
    # Values the statement carries itself (SQLite's "OFFSET ?" = 0 after a bound LIMIT).
    defaults: dict[str, Any]


def _compile(statement: Executable, dialect: Dialect, column_keys: Sequence[str]) -> _Compiled:
    assert isinstance(statement, ClauseElement)
    compiled: Any = statement.compile(dialect=dialect, column_keys=list(column_keys) or None)
    if getattr(compiled, "insert_prefetch", None) or compiled.positiontup is None:
        # Python-side column defaults (SQLAlchemy computes them per row): the
        # SQLAlchemy path handles those.
        raise _NotPreparable
    names = list(compiled.positiontup)
    expanding = frozenset(n for n in names if compiled.binds[n].expanding)
    return _Compiled(
        pieces=_EXPANDING.split(compiled.string)[::2],
        names=names,
        expanding=expanding,
        bind_processors=dict(compiled._bind_processors),
        keys=[entry[0] for entry in compiled._result_columns],
        result_processors=[
            entry[3]._cached_result_processor(dialect, None) for entry in compiled._result_columns
        ],
        defaults={
            name: compiled.binds[name].effective_value
            for name in names
            if not compiled.binds[name].required
        },
    )


class _NotPreparable(Exception):
    pass


class Prepared:
    """A statement to run many times with different parameters (see the module docstring).

    ``statement`` is any SQLAlchemy Core statement whose parameters are named bindparams
    (``bindparam("ids", expanding=True)`` for IN lists) or, for an INSERT without values,
    the table's columns."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled | None] = {}

    def _for(self, dialect: Dialect, column_keys: tuple[str, ...]) -> _Compiled | None:
        key = (dialect.name, column_keys)
        if key not in self._compiled:
            try:
                self._compiled[key] = _compile(self.statement, dialect, column_keys)
            except _NotPreparable:
                self._compiled[key] = None
        return self._compiled[key]

    async def rows(self, conn: AsyncConnection, params: Params) -> list[dict[str, Any]]:
        """The rows the statement selects, as dicts keyed by column."""
        inline = _inline(conn)
        compiled = self._for(conn.dialect, ()) if inline is not None else None
        if inline is None or compiled is None:
            result = await conn.execute(self.statement, dict(params))
            return [dict(row) for row in result.mappings()]
        sql, values = _bound(compiled, params)
        cursor = _run(inline, conn.dialect, sql, values, many=False)
        keys, processors = compiled.keys, compiled.result_processors
        found = []
        for raw in cursor.fetchall():
            found.append(
                {
                    key: (process(value) if process is not None and value is not None else value)
                    for key, process, value in zip(keys, processors, raw, strict=True)
                }
            )
        return found

    async def execute(self, conn: AsyncConnection, params: Params | Sequence[Params]) -> int:
        """Run the statement once, or once per parameter set of a list; rows affected."""
        batch: list[Params]
        if isinstance(params, Mapping):
            many, batch = False, [params]
        else:
            many, batch = True, list(params)
        if not batch:
            return 0
        inline = _inline(conn)
        column_keys = tuple(batch[0]) if self._is_insert else ()
        compiled = self._for(conn.dialect, column_keys) if inline is not None else None
        if (
            inline is None
            or compiled is None
            or (many and compiled.expanding)
            or any(tuple(p) != column_keys for p in batch[1:] if column_keys)
        ):
            parameters = [dict(p) for p in batch] if many else dict(batch[0])
            result = await conn.execute(self.statement, parameters)
            return int(result.rowcount or 0)
        if not many:
            sql, values = _bound(compiled, batch[0])
            return _run(inline, conn.dialect, sql, values, many=False).rowcount
        rows = [_bound(compiled, p)[1] for p in batch]
        return _run(inline, conn.dialect, compiled.pieces[0], rows, many=True).rowcount

    @property
    def _is_insert(self) -> bool:
        return bool(getattr(self.statement, "is_insert", False))


def runs_inline(conn: AsyncConnection) -> bool:
    """Whether prepared statements on ``conn`` run straight on an inline SQLite connection
    (a statement then costs microseconds, so several small ones can beat one large one)."""
    return _inline(conn) is not None


def _inline(conn: AsyncConnection) -> InlineConnection | None:
    sync = conn.sync_connection
    if sync is None or conn.dialect.name != "sqlite":
        return None
    driver = sync.connection.driver_connection
    return driver if isinstance(driver, InlineConnection) else None


def _bound(compiled: _Compiled, params: Params) -> tuple[str, list[Any]]:
    """The SQL with IN lists spelled out, and the positional values, converted as
    SQLAlchemy converts them."""
    values: list[Any] = []
    processors = compiled.bind_processors
    if compiled.defaults:
        params = {**compiled.defaults, **params}
    if not compiled.expanding:
        for name in compiled.names:
            value = params[name]
            process = processors.get(name)
            values.append(process(value) if process is not None else value)
        return compiled.pieces[0], values
    sql = [compiled.pieces[0]]
    piece = 1
    for name in compiled.names:
        value = params[name]
        process = processors.get(name)
        if name in compiled.expanding:
            items = [process(v) for v in value] if process is not None else list(value)
            values.extend(items)
            # An empty list matches nothing: IN (NULL) is never true.
            sql.append(", ".join("?" * len(items)) if items else "NULL")
            sql.append(compiled.pieces[piece])
            piece += 1
        else:
            values.append(process(value) if process is not None else value)
    return "".join(sql), values


def _run(
    inline: InlineConnection, dialect: Dialect, sql: str, values: Any, *, many: bool
) -> sqlite3.Cursor:
    """Run on the sqlite3 connection. The transaction holds the write lock (BEGIN IMMEDIATE)
    or reads a WAL snapshot, so nothing here waits for a lock."""
    try:
        if many:
            return inline._conn.executemany(sql, values)
        return inline._conn.execute(sql, values)
    except sqlite3.Error as error:
        raise DBAPIError.instance(sql, values, error, sqlite3.Error, dialect=dialect) from error
