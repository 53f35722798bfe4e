"""Async engines for SQLite (aiosqlite) and MySQL/MariaDB (asyncmy) from one URL.

One request or one message is one transaction, committed here at the edge
(:meth:`Database.run`); services receive a :class:`Tx` and only execute and flush.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import DateTime, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.util import await_only, greenlet_spawn
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_all,
    wait_exponential_jitter,
)

from libs.common.db.inline_sqlite import InlineConnection
from libs.common.ids import SHARD_COUNT

log = logging.getLogger("tuike.db")


@compiles(DateTime, "mysql")
@compiles(DateTime, "mariadb")
def _datetime_with_microseconds(type_: DateTime, compiler: Any, **kw: Any) -> str:
    """MySQL's DATETIME keeps whole seconds unless asked; we order facts (a rule's
    effective_from against an order's paid_at) below the second, as SQLite does."""
    return "DATETIME(6)"


T = TypeVar("T")

# The wait before the second attempt (the first of the retry loop, which waits between its own).
_FIRST_RETRY_SECONDS = 0.01

# MySQL/MariaDB: deadlock, lock wait timeout, server gone, lost connection, can't connect.
_MYSQL_RETRYABLE = {1213, 1205, 2006, 2013, 2003}


def is_retryable(exc: BaseException) -> bool:
    """A busy SQLite file or a MySQL deadlock/lost connection: run the transaction again."""
    if isinstance(exc, OperationalError | DBAPIError):
        text = str(exc.orig if getattr(exc, "orig", None) is not None else exc).lower()
        if "database is locked" in text or "database table is locked" in text:
            return True
        orig = getattr(exc, "orig", None)
        args = getattr(orig, "args", ())
        if args and isinstance(args[0], int) and args[0] in _MYSQL_RETRYABLE:
            return True
        if getattr(exc, "connection_invalidated", False):
            return True
    return False


def _make_engine(
    url: str, *, write: bool, echo: bool, lock_wait_seconds: float = 30.0
) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        options: dict[str, Any] = {"connect_args": {"timeout": 30}}  # :memory: keeps aiosqlite
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            path = parsed.database

            async def open_inline() -> InlineConnection:
                return await InlineConnection.open(path, lock_wait_seconds=lock_wait_seconds)

            options = {"async_creator": open_inline}
        inline = "async_creator" in options
        # LIFO: the connection used last is used next, and its page cache is still valid; a
        # connection whose cache went stale (another connection wrote) reads its pages again.
        engine = create_async_engine(
            url, echo=echo, pool_size=8, max_overflow=8, pool_use_lifo=True, **options
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let us issue BEGIN ourselves (pysqlite's implicit BEGIN is deferred).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # Inline connections wait for locks themselves, without blocking the loop.
            cursor.execute("PRAGMA busy_timeout=0" if inline else "PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            # Pages read through a memory map instead of a read call each.
            cursor.execute("PRAGMA mmap_size=268435456")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            # SQLite has one writer: take the write lock up front so two transactions never
            # both read and then deadlock upgrading; readers use a deferred BEGIN.
            driver = conn.connection.driver_connection
            if isinstance(driver, InlineConnection):
                # Straight to the driver: SQLAlchemy's statement machinery for a BEGIN cost
                # as much as an insert. Its errors are wrapped as that machinery wraps them
                # (a lock held elsewhere is an OperationalError the runner retries).
                try:
                    await_only(driver.begin(immediate=write))
                except sqlite3.Error as error:
                    raise DBAPIError.instance(
                        "BEGIN IMMEDIATE" if write else "BEGIN",
                        (),
                        error,
                        sqlite3.Error,
                        dialect=conn.dialect,
                    ) from error
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    return create_async_engine(
        url,
        echo=echo,
        pool_size=10,
        max_overflow=20,
        pool_pre_ping=True,
        pool_recycle=1800,
        isolation_level="READ COMMITTED",
    )


class Tx:
    """One unit of work: lazily opened connections, one per physical database it touches."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._connections: dict[str, AsyncConnection] = {}
        self._after_commit: list[Callable[[], Awaitable[None]]] = []

    async def _open(self, url: str) -> AsyncConnection:
        conn = self._connections.get(url)
        if conn is None:
            engine = self.db.engine_for_url(url)
            # Checkout and BEGIN in one hop into SQLAlchemy's sync layer (each hop costs a
            # greenlet, more than a small SQLite statement).
            conn = AsyncConnection(engine, await greenlet_spawn(_connect_and_begin, engine))
            self._connections[url] = conn
        return conn

    async def main(self) -> AsyncConnection:
        """The service's main database (global indexes, outbox, inbox, settings)."""
        return await self._open(self.db.url)

    async def shard(self, shard: int) -> AsyncConnection:
        """The physical database that holds logical shard ``shard``."""
        return await self._open(self.db.shard_url(shard))

    def after_commit(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` once the transaction committed (cache invalidation, wake-ups)."""
        self._after_commit.append(callback)

    async def _finish(self, commit: bool) -> None:
        # Shards first, main last: the main database holds the index rows that claim a value,
        # so a crash between the two leaves a claim that a retry resolves, never a lost claim.
        ordered = [
            conn.sync_connection
            for _, conn in sorted(self._connections.items(), key=lambda i: i[0] == self.db.url)
        ]
        self._connections.clear()
        await greenlet_spawn(_end_and_close, ordered, commit)


def _connect_and_begin(engine: AsyncEngine) -> Connection:
    conn = engine.sync_engine.connect()
    try:
        conn.begin()
    except BaseException:
        # A busy SQLite file or a lost server fails the BEGIN: give the connection back, or
        # every retry would leak one.
        conn.close()
        raise
    return conn


def _end_and_close(connections: list[Connection | None], commit: bool) -> None:
    """Commit (or roll back) each connection in order, then give them all back to the pool:
    a failed commit leaves the later ones uncommitted (closing rolls them back)."""
    try:
        for conn in connections:
            assert conn is not None
            if commit:
                conn.commit()
            else:
                conn.rollback()
    finally:
        for conn in connections:
            assert conn is not None
            conn.close()


class Database:
    """The engines of one service: primary, optional replica, and the shard map."""

    def __init__(
        self,
        url: str,
        replica_url: str | None = None,
        shard_map: dict[int, str] | None = None,
        *,
        echo: bool = False,
        max_attempts: int = 8,
        min_retry_seconds: float = 5.0,
        lock_wait_seconds: float = 30.0,
    ) -> None:
        self.url = url
        self.shard_map = {int(k): v for k, v in (shard_map or {}).items()}
        self.echo = echo
        self.max_attempts = max_attempts
        self._shards_by_url: dict[str, list[int]] | None = None
        self.min_retry_seconds = min_retry_seconds
        # SQLite: how long one statement waits for a write lock another process holds.
        self.lock_wait_seconds = lock_wait_seconds
        self._engines: dict[str, AsyncEngine] = {}
        # Called after a commit that wrote outbox rows (the relay wakes up at once).
        self.outbox_listeners: list[Callable[[], Awaitable[None]]] = []
        # SQLite read engines issue a deferred BEGIN: readers must not take the write lock.
        self._readers: dict[str, AsyncEngine] = {}
        self.primary = self.engine_for_url(url)
        self.dialect = self.primary.dialect.name
        self.primary_reader = self.reader_for_url(url)
        if replica_url:
            self.reader = _make_engine(
                replica_url, write=False, echo=echo, lock_wait_seconds=lock_wait_seconds
            )
        else:
            self.reader = self.primary_reader

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def engine_for_url(self, url: str) -> AsyncEngine:
        engine = self._engines.get(url)
        if engine is None:
            engine = _make_engine(
                url, write=True, echo=self.echo, lock_wait_seconds=self.lock_wait_seconds
            )
            self._engines[url] = engine
        return engine

    def reader_for_url(self, url: str) -> AsyncEngine:
        """The engine for reads of a physical database (its primary, never a replica)."""
        if make_url(url).get_backend_name() != "sqlite":
            return self.engine_for_url(url)
        engine = self._readers.get(url)
        if engine is None:
            engine = _make_engine(
                url, write=False, echo=self.echo, lock_wait_seconds=self.lock_wait_seconds
            )
            self._readers[url] = engine
        return engine

    def shard_url(self, shard: int) -> str:
        if not 0 <= shard < SHARD_COUNT:
            raise ValueError(f"logical shard {shard} out of range")
        return self.shard_map.get(shard, self.url)

    def physical_urls(self) -> list[str]:
        """Every distinct physical database, main first."""
        urls = [self.url]
        for shard in range(SHARD_COUNT):
            url = self.shard_url(shard)
            if url not in urls:
                urls.append(url)
        return urls

    def shards_by_url(self) -> dict[str, list[int]]:
        """The logical shards each physical database holds (fixed for the process: the map
        is read once; batch reads ask for it on every statement)."""
        if self._shards_by_url is None:
            grouped: dict[str, list[int]] = {}
            for shard in range(SHARD_COUNT):
                grouped.setdefault(self.shard_url(shard), []).append(shard)
            self._shards_by_url = grouped
        return {url: list(shards) for url, shards in self._shards_by_url.items()}

    async def run(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        """Run ``work`` in one transaction and commit it; retry it whole when the database
        is busy (SQLite) or reports a deadlock or a lost connection (MySQL)."""
        # Most transactions succeed at once: the first attempt runs without building the
        # retry machinery, which costs more than an empty SQLite transaction.
        try:
            return await self._attempt(work)
        except BaseException as error:
            if not is_retryable(error):
                raise
        await asyncio.sleep(_FIRST_RETRY_SECONDS)
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_retryable),
            # Both: a busy SQLite file clears in a few quick attempts, a MySQL failover or a
            # dropped connection takes seconds; only then is the caller told (503).
            stop=stop_all(
                stop_after_attempt(self.max_attempts - 1), stop_after_delay(self.min_retry_seconds)
            ),
            wait=wait_exponential_jitter(multiplier=0.01, max=1.0, jitter=0.05),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(work)
        raise AssertionError("unreachable")

    async def _attempt(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        tx = Tx(self)
        try:
            result = await work(tx)
        except BaseException:
            await tx._finish(commit=False)
            raise
        await tx._finish(commit=True)
        for callback in tx._after_commit:
            try:
                await callback()
            except Exception:
                log.exception("after-commit callback failed")
        return result

    @asynccontextmanager
    async def read(self, *, may_lag: bool = True) -> AsyncIterator[AsyncConnection]:
        """A read-only connection: the replica for reads that may lag (lists, stats), the
        primary for reads that decide money."""
        engine = self.reader if may_lag else self.primary_reader
        async with engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def read_shard(
        self, shard: int, *, may_lag: bool = True
    ) -> AsyncIterator[AsyncConnection]:
        url = self.shard_url(shard)
        if url == self.url:
            async with self.read(may_lag=may_lag) as conn:
                yield conn
            return
        async with self.reader_for_url(url).connect() as conn:
            yield conn

    async def ping(self) -> None:
        from sqlalchemy import text

        async with self.primary_reader.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        engines = {*self._engines.values(), *self._readers.values(), self.reader}
        for engine in engines:
            await engine.dispose()
