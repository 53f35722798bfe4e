"""Statements compiled once and run straight on the driver's connection.

SQLAlchemy spends ~80 µs of Python on each statement it executes (cache key, execution
context, result set-up, a greenlet hop) where the statement itself, on an inline SQLite
connection (``inline_sqlite``), takes 2-20 µs. A hot path that runs a dozen statements per
transaction (a batch of binds, the outbox) spends most of its time there. A ``Prepared``
statement is compiled by SQLAlchemy once per dialect, with SQLAlchemy's own type conversions
for parameters and results, and then run on sqlite3 directly, or awaited on the asyncmy
connection directly for MySQL/MariaDB (where SQLAlchemy's path cost 0.35 ms of CPU per
statement against 0.12 ms); with any other driver it is executed through SQLAlchemy as
usual. Same SQL, same values, same errors (wrapped as SQLAlchemy wraps them) either way
(docs/decisions/0105-inline-sqlite.md, 0110-direct-mysql-statements.md).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement, Executable, union_all

from libs.common.db.inline_sqlite import InlineConnection

_EXPANDING = re.compile(r"__\[POSTCOMPILE_(\w+)\]")

Params = Mapping[str, Any]
Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Compiled:
    pieces: list[str]  # the SQL split around expanding parameters (len = expanding + 1)
    names: list[str]  # parameter names in placeholder order
    placeholder: str  # "?" (sqlite3) or "%s" (asyncmy): how an expanded IN list is spelled
    expanding: frozenset[str]
    bind_processors: dict[str, Callable[[Any], Any]]
    keys: list[str]  # result column keys
    result_processors: list[Processor]
    # Values the statement carries itself (SQLite's "OFFSET ?" = 0 after a bound LIMIT).
    defaults: dict[str, Any]

    @cached_property
    def values_of(self) -> Callable[[Params], Sequence[Any]] | None:
        """The positional values of one parameter set picked in C, when none needs converting
        (no IN list, no conversion, no default): a many-row write (1,000 team counts along a
        deep path) then spends no Python per value. None otherwise."""
        if self.expanding or self.bind_processors or self.defaults or not self.names:
            return None
        if len(self.names) == 1:
            (name,) = self.names
            return lambda params: (params[name],)
        return itemgetter(*self.names)


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
        placeholder="%s" if dialect.paramstyle == "format" else "?",
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
        driver = _driver(conn)
        compiled = self._for(conn.dialect, ()) if driver is not None else None
        if driver is None or compiled is None:
            result = await conn.execute(self.statement, dict(params))
            return [dict(row) for row in result.mappings()]
        return await _direct_rows(conn, driver, compiled, params)

    async def execute(self, conn: AsyncConnection, params: Params | Sequence[Params]) -> int:
        """Run the statement once, or once per parameter set of a list; rows affected."""
        batch: list[Params]
        if isinstance(params, Mapping):
            many, batch = False, [params]
        else:
            many, batch = True, list(params)
        if not batch:
            return 0
        driver = _driver(conn)
        column_keys = tuple(batch[0]) if self._is_insert else ()
        compiled = self._for(conn.dialect, column_keys) if driver is not None else None
        if (
            driver is None
            or compiled is None
            or (many and compiled.expanding)
            or (column_keys and _other_columns(batch))
        ):
            parameters = [dict(p) for p in batch] if many else dict(batch[0])
            result = await conn.execute(self.statement, parameters)
            return int(result.rowcount or 0)
        if many:
            values_of = compiled.values_of
            sql = compiled.pieces[0]
            if values_of is not None:
                values = list(map(values_of, batch))
            else:
                values = [_bound(compiled, p)[1] for p in batch]
        else:
            sql, values = _bound(compiled, batch[0])
        if isinstance(driver, InlineConnection):
            return _run(driver, conn.dialect, sql, values, many=many).rowcount
        _, rowcount = await _run_asyncmy(conn, driver, sql, values, many=many)
        return rowcount

    @property
    def _is_insert(self) -> bool:
        return bool(getattr(self.statement, "is_insert", False))


class PreparedUnion:
    """``UNION ALL`` of any subset of some prepared SELECTs with the same columns (one per
    shard table): each part is compiled once, and a run joins the SQL of the parts it is
    given. Compiling every subset would not do: sixteen shards have 65,536 of them, and a
    union of all sixteen (empty ones matching nothing) made MariaDB parse and plan sixteen
    SELECTs for the one or two a batch needs."""

    def __init__(self, parts: Mapping[Any, Prepared]) -> None:
        self.parts = dict(parts)

    async def rows(
        self, conn: AsyncConnection, chosen: Sequence[Any], params: Params
    ) -> list[dict[str, Any]]:
        """The rows of the chosen parts (keys of ``parts``), as dicts keyed by column."""
        parts = [self.parts[key] for key in chosen]
        if len(parts) == 1:
            return await parts[0].rows(conn, params)
        driver = _driver(conn)
        compiled = [part._for(conn.dialect, ()) for part in parts] if driver is not None else []
        if driver is None or any(c is None for c in compiled):
            statement = union_all(*(part.statement for part in parts))
            result = await conn.execute(statement, dict(params))
            return [dict(row) for row in result.mappings()]
        return await _direct_rows(conn, driver, _joined([c for c in compiled if c]), params)


def _joined(parts: list[_Compiled]) -> _Compiled:
    """One statement of the parts' SQL joined by UNION ALL (their parameters by name)."""
    pieces = list(parts[0].pieces)
    for part in parts[1:]:
        pieces[-1] += " UNION ALL " + part.pieces[0]
        pieces.extend(part.pieces[1:])
    first = parts[0]
    return _Compiled(
        pieces=pieces,
        names=[name for part in parts for name in part.names],
        placeholder=first.placeholder,
        expanding=frozenset().union(*(part.expanding for part in parts)),
        bind_processors={k: v for part in parts for k, v in part.bind_processors.items()},
        keys=first.keys,
        result_processors=first.result_processors,
        defaults={k: v for part in parts for k, v in part.defaults.items()},
    )


async def _direct_rows(
    conn: AsyncConnection, driver: Any, compiled: _Compiled, params: Params
) -> list[dict[str, Any]]:
    sql, values = _bound(compiled, params)
    if isinstance(driver, InlineConnection):
        raw_rows: Sequence[Sequence[Any]] = _run(
            driver, conn.dialect, sql, values, many=False
        ).fetchall()
    else:
        raw_rows, _ = await _run_asyncmy(conn, driver, sql, values, many=False)
    keys, processors = compiled.keys, compiled.result_processors
    found = []
    for raw in raw_rows:
        found.append(
            {
                key: (process(value) if process is not None and value is not None else value)
                for key, process, value in zip(keys, processors, raw, strict=True)
            }
        )
    return found


def runs_inline(conn: AsyncConnection) -> bool:
    """Whether prepared statements on ``conn`` run straight on an inline SQLite connection
    (a statement then costs microseconds, so several small ones can beat one large one)."""
    return isinstance(_driver(conn), InlineConnection)


def _driver(conn: AsyncConnection) -> Any:
    """The connection a prepared statement runs on directly: an ``InlineConnection``, an
    asyncmy connection, or None (SQLAlchemy runs it)."""
    sync = conn.sync_connection
    if sync is None:
        return None
    dialect = conn.dialect
    if dialect.name == "sqlite":
        driver = sync.connection.driver_connection
        return driver if isinstance(driver, InlineConnection) else None
    if dialect.driver == "asyncmy":
        return sync.connection.driver_connection
    return None


def _other_columns(batch: list[Params]) -> bool:
    """Whether a row of an INSERT has other columns than the first (the statement was compiled
    for the first's). Values are picked by name, so the order of a row's keys is free."""
    first = batch[0].keys()
    return any(row.keys() != first for row in batch[1:])


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
            sql.append(", ".join([compiled.placeholder] * len(items)) if items else "NULL")
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


async def _run_asyncmy(
    conn: AsyncConnection, driver: Any, sql: str, values: Any, *, many: bool
) -> tuple[Sequence[Sequence[Any]], int]:
    """Run on the asyncmy connection inside the transaction SQLAlchemy began on it; returns
    the rows and the rows affected. Errors are wrapped as SQLAlchemy wraps them; a lost
    connection is invalidated and marked so (``Database.run`` runs the transaction again)."""
    dialect = conn.dialect
    dbapi = dialect.loaded_dbapi
    try:
        cursor = driver.cursor()
        try:
            if many:
                await cursor.executemany(sql, values)
            else:
                await cursor.execute(sql, values)
            rows = await cursor.fetchall() if cursor.description else ()
            return rows, int(cursor.rowcount)
        finally:
            await cursor.close()
    except (dbapi.Error, AttributeError) as error:
        # asyncmy raises AttributeError when its socket is gone (SQLAlchemy's adapter
        # reports that as this InternalError).
        original = (
            dbapi.InternalError("network operation failed due to asyncmy attribute error")
            if isinstance(error, AttributeError)
            else error
        )
        lost = dialect.is_disconnect(original, None, None)
        if lost:
            # As SQLAlchemy does: the pool never hands the connection out again, and the
            # transaction's rollback does not try it (its error would hide this one).
            await conn.invalidate(original)
        raise DBAPIError.instance(
            sql, values, original, dbapi.Error, dialect=dialect, connection_invalidated=lost
        ) from error
