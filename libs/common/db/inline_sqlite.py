"""An asyncio SQLite driver that runs each statement on the event loop's own thread.

aiosqlite runs every call (cursor, execute, fetch, close: four per statement) on a helper
thread and wakes the loop when it is done. On two cores each of those hand-offs costs far more
than the statement: the helper waits for the interpreter lock the loop holds, up to the 5 ms
switch interval. A SQLite statement on a page-cached file takes microseconds, so it is cheaper
to run it where the caller already is (docs/decisions/0105-inline-sqlite.md).

Running inline means a statement must never wait for a lock on the loop's thread, or it would
stall every other task, including the one that holds the lock. So the connection's own busy
timeout is zero and waiting is done here, asynchronously:

- writers of one file in this process queue on an asyncio lock taken at ``BEGIN IMMEDIATE``
  and given back at commit, rollback or close (fair, no polling);
- a lock held by another process (a worker, an import) is polled with short sleeps, up to
  ``timeout`` seconds, then reported as SQLite reports it ("database is locked"), which the
  transaction runner retries.

Checkpoints (copying the write-ahead log back into the database file, with an fsync) would
otherwise fall to whichever commit crosses the log's size limit, a stall of several ms in one
request of a few hundred. Inline connections turn automatic checkpoints off and a task per
file does them in the background (``Checkpointer``), on worker threads, where SQLite works
without the interpreter lock. Each process with inline connections to a file runs its own.

SQLAlchemy wraps the connection as it wraps aiosqlite's (``async_creator`` of the engine);
this module provides the part of aiosqlite's interface that wrapper uses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")

log = logging.getLogger("tuike.db.sqlite")

_FIRST_SLEEP = 0.001
_LONGEST_SLEEP = 0.025

# One writer queue per database file and event loop (tests run several loops in one process).
_writer_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _writer_lock(path: str) -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    locks = _writer_locks.get(loop)
    if locks is None:
        locks = _writer_locks[loop] = {}
    lock = locks.get(path)
    if lock is None:
        lock = locks[path] = asyncio.Lock()
    return lock


def _is_busy(error: sqlite3.OperationalError) -> bool:
    text = str(error)
    return "database is locked" in text or "database table is locked" in text


class Checkpointer:
    """Checkpoints one database file's write-ahead log for the inline connections of one event
    loop, while any is open.

    Every ``interval`` seconds a PASSIVE checkpoint copies what it can on a worker thread; it
    never waits for, nor holds up, readers or writers. But a log that is written to all the
    time is never wholly copied at the moment a writer could start it over, so it would grow
    without end: once it holds ``restart_pages`` pages, the checkpointer catches up without
    the lock (passes, each followed by an fsync of the database file), then takes the process's
    writer lock (in-process writers wait, as for any transaction) and runs a RESTART checkpoint,
    which copies and syncs the little that is left and lets the next writer start the log over.
    Readers that hold an old snapshot make it give up after a moment; it tries again later.

    It checkpoints what this process writes: while none of its connections has committed a
    write transaction since a pass that copied the whole log, it skips the pass (an idle
    service spent ~8% of a core on them: a connection opened on a worker thread 20 times a
    second). Another process writing the file checkpoints its own writes.
    """

    interval = 0.05
    restart_pages = 32768  # 128 MB of 4 KB pages: at most every few seconds under load
    catch_up_rounds = 3
    short_round_seconds = 0.015
    _running: ClassVar[
        weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Checkpointer]]
    ] = weakref.WeakKeyDictionary()

    @classmethod
    def log_bytes_kept(cls) -> int:
        """``journal_size_limit``: a log started over keeps its file up to a quarter more than
        a restart lets it hold (what is written during the catch-up), so the next round of
        writes overwrites blocks the file already has. Cut back to less, every round grew the
        file again, and the writers' commits paid the file system for new blocks and zeroed
        pages (decision 0105)."""
        return cls.restart_pages * 4096 * 5 // 4

    def __init__(self, path: str) -> None:
        self.path = path
        self.users = 0
        self.passive = 0
        self.restarts = 0
        # Write transactions committed by this process's connections (InlineConnection.commit),
        # and how many of them the last pass that copied the whole log had seen.
        self.writes = 0
        self._copied_writes = -1
        self.stopped = False
        self.task: asyncio.Task[None] | None = None

    @property
    def caught_up(self) -> bool:
        """A pass has copied the whole log since this process's last write transaction."""
        return self.writes == self._copied_writes

    @classmethod
    def acquire(cls, path: str) -> Checkpointer:
        loop = asyncio.get_running_loop()
        running = cls._running.setdefault(loop, {})
        checkpointer = running.get(path)
        if checkpointer is None:
            checkpointer = running[path] = Checkpointer(path)
            checkpointer.task = loop.create_task(checkpointer._run(), name=f"checkpoint {path}")
        checkpointer.users += 1
        return checkpointer

    def release(self) -> None:
        """Called from wherever a connection is closed (even outside the loop): the task
        sees the flag after its current sleep and ends."""
        self.users -= 1
        if self.users <= 0:
            self.stopped = True
            for running in list(self._running.values()):
                if running.get(self.path) is self:
                    del running[self.path]

    async def _run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                if self.stopped:
                    return
                if self.caught_up:
                    continue
                writes = self.writes
                log_pages, copied = await asyncio.to_thread(_checkpoint, self.path, "PASSIVE")
                self.passive += 1
                if log_pages == copied >= 0:
                    self._copied_writes = writes
                if log_pages >= self.restart_pages:
                    # First, without the lock, rounds of a pass and an fsync of the database
                    # file, until a round finds little to do: under the lock only what was
                    # written meanwhile is left to copy and sync. (That fsync took 30-50 ms
                    # under deep binds, all of it with every writer waiting.)
                    for _ in range(self.catch_up_rounds):
                        started = time.monotonic()
                        await asyncio.to_thread(_checkpoint_and_sync, self.path)
                        if time.monotonic() - started < self.short_round_seconds:
                            break
                    async with _writer_lock(self.path):
                        if self.stopped:
                            return
                        # On the loop's thread: a worker thread would wait for the
                        # interpreter lock (up to 5 ms a time) while every writer waits for it.
                        # What is left to copy and sync takes a few ms; a reader still on an
                        # old snapshot makes it give up at once.
                        if _checkpoint(self.path, "RESTART", wait_seconds=0)[0] >= 0:
                            self.restarts += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            # The log then grows until the next process that checkpoints: worth a loud line,
            # not a failed request.
            log.exception("background checkpoints of %s stopped", self.path)


def _checkpoint_and_sync(path: str) -> None:
    """A PASSIVE checkpoint, then an fsync of the database file."""
    _checkpoint(path, "PASSIVE")
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _checkpoint(path: str, mode: str, wait_seconds: float = 0.02) -> tuple[int, int]:
    """One checkpoint on a connection of its own; returns the pages in the log and the pages
    copied, or -1, -1 when SQLite was busy (another checkpoint, or readers that held on past
    ``wait_seconds``)."""
    conn = sqlite3.connect(path, timeout=wait_seconds, isolation_level=None)
    try:
        conn.execute(f"PRAGMA journal_size_limit={Checkpointer.log_bytes_kept()}")
        busy, log_pages, copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        return (-1, -1) if busy else (int(log_pages), int(copied))
    except sqlite3.OperationalError as error:
        if _is_busy(error):
            return -1, -1
        raise
    finally:
        conn.close()


class _InlineQueue:
    """aiosqlite's request queue, as SQLAlchemy uses it to set ``isolation_level``: the
    function runs at once, here."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as error:
            future.set_exception(error)


class InlineCursor:
    __slots__ = ("_connection", "_cursor")

    def __init__(self, connection: InlineConnection) -> None:
        self._connection = connection
        self._cursor = connection._conn.cursor()

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> InlineCursor:
        connection = self._connection
        if sql.lstrip()[:15].upper() == "BEGIN IMMEDIATE":
            await connection.begin(immediate=True)
            return self
        try:
            await connection._retry_busy(self._cursor.execute, sql, parameters or ())
        except BaseException:
            if not connection._conn.in_transaction:
                connection._give_back_writer_lock()
            raise
        return self

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> InlineCursor:
        await self._connection._retry_busy(self._cursor.executemany, sql, rows)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    async def setinputsizes(self, *sizes: Any) -> None:
        return None

    async def nextset(self) -> None:
        return None


class InlineConnection:
    """A sqlite3 connection used from the event loop's thread (see the module's docstring)."""

    def __init__(self, conn: sqlite3.Connection, path: str, timeout: float) -> None:
        self._conn = conn
        self._path = path
        self._timeout = timeout
        self._tx = _InlineQueue(conn)
        self._writer: asyncio.Lock | None = None  # held from BEGIN IMMEDIATE to its end
        # The file's writer lock for the loop this connection last wrote from, looked up once.
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._connection: sqlite3.Connection | None = conn  # aiosqlite's "still open" flag
        self._checkpointer: Checkpointer | None = None

    @classmethod
    async def open(cls, path: str, *, lock_wait_seconds: float = 30.0) -> InlineConnection:
        conn = sqlite3.connect(
            path,
            timeout=0,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=512,  # prepared statements vary with their IN lists' lengths
        )
        connection = cls(conn, path, lock_wait_seconds)
        try:
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={Checkpointer.log_bytes_kept()}")
            connection._checkpointer = Checkpointer.acquire(path)
        except BaseException:
            conn.close()
            raise
        return connection

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    async def _take_writer_lock(self) -> None:
        if self._writer is None:
            loop = asyncio.get_running_loop()
            lock = self._lock
            if lock is None or self._lock_loop is not loop:
                lock = self._lock = _writer_lock(self._path)
                self._lock_loop = loop
            # One turn of the loop first, even when the lock is free: a task that writes
            # transaction after transaction (an import, a move job) would otherwise never
            # suspend, and starve every other task of this thread, the background
            # checkpoints included. (asyncio.timeout arms a timer; wait_for also made a task.)
            await asyncio.sleep(0)
            async with asyncio.timeout(self._timeout):
                await lock.acquire()
            self._writer = lock

    def _give_back_writer_lock(self) -> None:
        lock, self._writer = self._writer, None
        if lock is not None:
            lock.release()

    async def _retry_busy(
        self, function: Callable[..., T], *args: Any, in_transaction_too: bool = False
    ) -> T:
        """Run ``function``; while another process holds the lock it needs, sleep and retry
        (SQLite's busy handler, without blocking the loop). Inside a transaction only for a
        commit: a statement of a read transaction that finds the lock taken cannot wait it
        out (its snapshot is stale once the writer commits), so it fails at once, as SQLite's
        own busy handler lets it, and the whole transaction is retried."""
        deadline = None
        sleep = _FIRST_SLEEP
        while True:
            may_wait = in_transaction_too or not self._conn.in_transaction
            try:
                return function(*args)
            except sqlite3.OperationalError as error:
                if not _is_busy(error) or not may_wait:
                    raise
                now = time.monotonic()
                deadline = deadline or now + self._timeout
                if now >= deadline:
                    raise
            await asyncio.sleep(sleep)
            sleep = min(sleep * 2, _LONGEST_SLEEP)

    async def begin(self, *, immediate: bool) -> None:
        """BEGIN, or BEGIN IMMEDIATE after taking this process's writer lock for the file."""
        if not immediate:
            await self._retry_busy(self._conn.execute, "BEGIN")
            return
        await self._take_writer_lock()
        try:
            await self._retry_busy(self._conn.execute, "BEGIN IMMEDIATE")
        except BaseException:
            self._give_back_writer_lock()
            raise

    def cursor(self) -> InlineCursor:
        return InlineCursor(self)

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> InlineCursor:
        return await self.cursor().execute(sql, parameters)

    async def commit(self) -> None:
        try:
            await self._retry_busy(self._conn.commit, in_transaction_too=True)
        finally:
            if not self._conn.in_transaction:
                if self._writer is not None and self._checkpointer is not None:
                    self._checkpointer.writes += 1  # the log has something to copy
                self._give_back_writer_lock()

    async def rollback(self) -> None:
        try:
            self._conn.rollback()
        finally:
            self._give_back_writer_lock()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        self.stop()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            try:
                self._conn.close()
            finally:
                self._give_back_writer_lock()
                if self._checkpointer is not None:
                    self._checkpointer.release()
                    self._checkpointer = None
