"""The inline SQLite driver waits for locks without blocking the event loop, and prepared
statements give what SQLAlchemy gives (values, conversions, counts, errors) on every backend.

The ``db`` fixture is SQLite and, where TUIKE_TEST_MYSQL_URL is set, MariaDB too: there the
prepared statements run straight on the asyncmy connection, and must answer the same."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    func,
    select,
    text,
    union_all,
)
from sqlalchemy.exc import DBAPIError, IntegrityError

from libs.common.db.engine import Database, Tx, is_retryable
from libs.common.db.inline_sqlite import Checkpointer, InlineConnection
from libs.common.db.migrations import Migration, MigrationContext, migrate
from libs.common.db.prepared import Prepared, PreparedUnion, runs_inline
from libs.common.db.sql import insert_ignore, upsert_add
from tests.conftest import BACKENDS

meta = MetaData()
visits = Table(
    "visits",
    meta,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("name", String(32), nullable=False, unique=True),
    Column("seen_at", DateTime, nullable=True),
    Column("hits", Integer, nullable=False),
    # A Python-side default: prepared inserts leave such statements to SQLAlchemy.
    Column("kind", String(8), nullable=False, default="plain"),
)
# Columns that need no conversion on SQLite: many-row writes pick their values by name in C.
counters = Table(
    "counters",
    meta,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("label", String(16), nullable=False),
    Column("total", Integer, nullable=False),
)


async def _schema(ctx: MigrationContext) -> None:
    await ctx.create_tables(meta)


MIGRATIONS = [Migration(1, "visits", _schema)]

BY_IDS = Prepared(
    select(visits.c.id, visits.c.name, visits.c.seen_at)
    .where(visits.c.id.in_(bindparam("ids", expanding=True)))
    .where(visits.c.hits >= bindparam("least"))
    .order_by(visits.c.id)
)
SEEN_AFTER = Prepared(select(visits.c.name).where(visits.c.seen_at > bindparam("after")))
# A bound LIMIT: SQLite's dialect adds an "OFFSET ?" whose value the statement carries.
FIRST_AFTER = Prepared(
    select(visits.c.id)
    .where(visits.c.id > bindparam("after"))
    .order_by(visits.c.id)
    .limit(bindparam("limit"))
)


def _row(i: int, seen_at: datetime | None = None, hits: int = 1) -> dict[str, object]:
    return {"id": i, "name": f"n{i}", "seen_at": seen_at, "hits": hits, "kind": "plain"}


async def test_prepared_statements_answer_as_sqlalchemy_does(db: Database) -> None:
    await migrate(db, MIGRATIONS)
    at = datetime(2026, 11, 26, 17, 40, 1, 123456)

    async def write(tx: Tx) -> list[int]:
        conn = await tx.main()
        counts = [await insert_ignore(conn, visits, [_row(1, at, 5), _row(2), _row(3, at)])]
        # Two new rows, one colliding on the primary key and one on the unique name.
        counts.append(
            await insert_ignore(
                conn, visits, [_row(4), _row(1), {**_row(9), "name": "n2"}, _row(5, at, 7)]
            )
        )
        await upsert_add(conn, visits, [_row(5, hits=10), _row(6, hits=2)], ["id"], ["hits"])
        return counts

    assert await db.run(write) == [3, 2]
    async with db.read(may_lag=False) as conn:
        found = await BY_IDS.rows(conn, {"ids": [5, 1, 3, 99], "least": 1})
        assert found == [
            {"id": 1, "name": "n1", "seen_at": at},
            {"id": 3, "name": "n3", "seen_at": at},
            {"id": 5, "name": "n5", "seen_at": at},
        ]
        assert await BY_IDS.rows(conn, {"ids": [], "least": 0}) == []
        assert await BY_IDS.rows(conn, {"ids": [1, 2, 3, 4, 5, 6], "least": 6}) == [
            {"id": 5, "name": "n5", "seen_at": at}
        ]
        # A datetime parameter is converted as SQLAlchemy stores it (microseconds kept).
        names = await SEEN_AFTER.rows(conn, {"after": datetime(2026, 11, 26, 17, 40, 1, 123455)})
        assert sorted(r["name"] for r in names) == ["n1", "n3", "n5"]
        assert await SEEN_AFTER.rows(conn, {"after": at}) == []
        assert await FIRST_AFTER.rows(conn, {"after": 1, "limit": 2}) == [{"id": 2}, {"id": 3}]
        assert await FIRST_AFTER.rows(conn, {"after": 4, "limit": 9}) == [{"id": 5}, {"id": 6}]
        hits = dict((await conn.execute(select(visits.c.id, visits.c.hits))).all())
        assert hits == {1: 5, 2: 1, 3: 1, 4: 1, 5: 17, 6: 2}


async def test_many_rows_are_written_by_name_whatever_the_order_of_their_keys(
    db: Database,
) -> None:
    await migrate(db, MIGRATIONS)
    rows = [
        {"id": 1, "label": "a", "total": 1},
        {"total": 2, "id": 2, "label": "b"},
        {"label": "c", "total": 3, "id": 3},
    ]

    async def write(tx: Tx) -> int:
        conn = await tx.main()
        inserted = await insert_ignore(conn, counters, rows)
        await upsert_add(
            conn,
            counters,
            [{"total": 10, "id": 1, "label": "a"}, {"id": 4, "label": "d", "total": 4}],
            ["id"],
            ["total"],
        )
        return inserted

    assert await db.run(write) == 3
    async with db.read(may_lag=False) as conn:
        found = (await conn.execute(select(counters).order_by(counters.c.id))).all()
    assert [tuple(row) for row in found] == [(1, "a", 11), (2, "b", 2), (3, "c", 3), (4, "d", 4)]


async def test_a_prepared_union_of_any_parts_answers_as_sqlalchemys_union(
    db: Database,
) -> None:
    """Parts compiled once, joined per run: every subset, in any order, gives the rows
    SQLAlchemy's own UNION ALL of the same SELECTs gives (expanded lists, plain values and
    datetimes converted on the way in, datetimes on the way out)."""
    await migrate(db, MIGRATIONS)
    at = datetime(2026, 11, 26, 17, 40, 1, 123456)

    async def write(tx: Tx) -> None:
        rows = [_row(i, at if i % 2 else None, hits=i) for i in range(1, 9)]
        await insert_ignore(await tx.main(), visits, rows)

    await db.run(write)
    columns = (visits.c.id, visits.c.name, visits.c.seen_at)
    parts = {
        "by_id": select(*columns).where(visits.c.id.in_(bindparam("ids", expanding=True))),
        "busy": select(*columns).where(visits.c.hits >= bindparam("least")),
        "seen": select(*columns).where(
            visits.c.seen_at >= bindparam("since"),
            visits.c.name.in_(bindparam("names", expanding=True)),
        ),
    }
    union = PreparedUnion({key: Prepared(statement) for key, statement in parts.items()})
    params = {"ids": [2, 3, 99], "least": 7, "since": at, "names": ["n1", "n5", "n6"]}
    subsets = [["by_id"], ["busy", "seen"], ["seen", "by_id"], ["by_id", "busy", "seen"]]
    async with db.read(may_lag=False) as conn:
        for chosen in subsets:
            expected = [
                dict(row)
                for row in (
                    await conn.execute(union_all(*(parts[key] for key in chosen)), params)
                ).mappings()
            ]
            found = await union.rows(conn, chosen, params)
            key = lambda row: (row["id"], row["name"])  # noqa: E731
            assert sorted(found, key=key) == sorted(expected, key=key), chosen
        everything = await union.rows(conn, ["by_id", "busy", "seen"], params)
        assert sorted(row["id"] for row in everything) == [1, 2, 3, 5, 7, 8]
        assert {row["id"]: row["seen_at"] for row in everything}[5] == at
        assert await union.rows(conn, ["by_id", "seen"], {**params, "ids": [], "names": []}) == []


async def test_prepared_errors_are_sqlalchemy_errors_and_defaults_still_apply(
    db: Database,
) -> None:
    await migrate(db, MIGRATIONS)
    unchecked = Prepared(visits.insert())

    async def duplicate(tx: Tx) -> None:
        conn = await tx.main()
        await unchecked.execute(conn, [_row(1), _row(1)])

    with pytest.raises(IntegrityError):
        await db.run(duplicate)

    async def defaulted(tx: Tx) -> int:
        conn = await tx.main()
        row = {k: v for k, v in _row(7).items() if k != "kind"}
        return await unchecked.execute(conn, row)

    assert await db.run(defaulted) == 1
    async with db.read(may_lag=False) as conn:
        assert (await conn.execute(select(visits.c.id, visits.c.kind))).all() == [(7, "plain")]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b.mysql_url], ids=str)
async def test_a_connection_lost_under_a_prepared_statement_is_not_used_again(
    db: Database,
) -> None:
    """MariaDB only: the server ends the connection (KILL) in the middle of a transaction.
    The prepared statement's error is SQLAlchemy's, marked as a lost connection, so the
    transaction runs again on a new connection and the pool never hands out the dead one."""
    await migrate(db, MIGRATIONS)
    connection_ids: list[int] = []
    failures: list[tuple[BaseException, bool]] = []

    async def work(tx: Tx) -> int:
        conn = await tx.main()
        connection_ids.append((await conn.execute(text("SELECT CONNECTION_ID()"))).scalar_one())
        if len(connection_ids) == 1:
            async with db.primary.connect() as other:
                await other.execute(text(f"KILL {connection_ids[0]}"))
            try:
                await BY_IDS.rows(conn, {"ids": [1], "least": 0})
            except BaseException as error:
                failures.append((error, conn.invalidated))
                raise
        assert await BY_IDS.rows(conn, {"ids": [1], "least": 0}) == []
        return await insert_ignore(conn, visits, [_row(1)])

    assert await db.run(work) == 1
    assert len(connection_ids) == 2 and connection_ids[0] != connection_ids[1]
    # Checked here: inside the transaction the rollback's own error would hide a failure.
    ((lost, invalidated),) = failures
    assert isinstance(lost, DBAPIError) and lost.connection_invalidated and is_retryable(lost)
    assert invalidated  # as SQLAlchemy does on its own path: the pool drops the connection

    async def count(tx: Tx) -> int:
        rows = await BY_IDS.rows(await tx.main(), {"ids": [1], "least": 0})
        return len(rows)

    # Every connection the pool hands out afterwards is alive.
    assert [await db.run(count) for _ in range(12)] == [1] * 12


async def test_sqlite_engines_run_inline(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}")
    await migrate(db, MIGRATIONS)

    async def check(tx: Tx) -> bool:
        return runs_inline(await tx.main())

    assert await db.run(check)
    await db.dispose()


def _hold_write_lock(path: Path, seconds: float, started: threading.Event) -> None:
    """Another process's writer, as SQLite sees it: another connection holding the lock."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO visits (id, name, hits, kind) VALUES (100, 'other', 1, 'x')")
    started.set()
    time.sleep(seconds)
    other.execute("COMMIT")
    other.close()


async def _lock_held_elsewhere(path: Path, seconds: float) -> threading.Thread:
    """A thread holding the file's write lock for ``seconds``, once it holds it."""
    started = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(path, seconds, started))
    holder.start()
    await asyncio.to_thread(started.wait, 5)
    return holder


async def test_a_lock_held_elsewhere_is_waited_for_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "held.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await migrate(db, MIGRATIONS)
    holder = await _lock_held_elsewhere(path, 0.6)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async def write(tx: Tx) -> None:
        await insert_ignore(await tx.main(), visits, [_row(1)])

    clock = asyncio.create_task(ticker())
    began = time.monotonic()
    await db.run(write)
    waited = time.monotonic() - began
    clock.cancel()
    await asyncio.to_thread(holder.join)
    assert waited >= 0.4  # it did wait for the other writer...
    assert ticks >= 20  # ...while the loop went on serving others
    async with db.read(may_lag=False) as conn:
        assert await conn.scalar(select(func.count()).select_from(visits)) == 2
    await db.dispose()


async def test_writers_in_one_process_queue_and_a_lock_never_released_is_reported(
    tmp_path: Path,
) -> None:
    path = tmp_path / "queue.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await migrate(db, MIGRATIONS)

    async def write(i: int) -> None:
        async def work(tx: Tx) -> None:
            conn = await tx.main()
            await insert_ignore(conn, visits, [_row(i)])
            await asyncio.sleep(0.005)  # hold the lock across a suspension
            await upsert_add(conn, visits, [_row(i, hits=1)], ["id"], ["hits"])

        await db.run(work)

    await asyncio.gather(*(write(i) for i in range(40)))
    async with db.read(may_lag=False) as conn:
        hits = (await conn.execute(select(func.sum(visits.c.hits), func.count()))).one()
    assert tuple(hits) == (80, 40)

    # A lock held elsewhere past the wait: the error SQLite gives, after the wait, not before.
    connection = await InlineConnection.open(str(path), lock_wait_seconds=0.3)
    holder = await _lock_held_elsewhere(path, 1.0)
    began = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        await connection.execute("BEGIN IMMEDIATE")
    assert time.monotonic() - began >= 0.3
    # The failed BEGIN gave the process's writer lock back: the next writer is not stuck.
    await asyncio.to_thread(holder.join)
    await db.run(write_one)
    await connection.close()
    await db.dispose()


async def write_one(tx: Tx) -> None:
    await insert_ignore(await tx.main(), visits, [_row(500)])


async def test_an_idle_process_runs_no_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a pass has copied the whole log, the checkpointer waits for the process's next
    write transaction; reads alone start no pass."""
    monkeypatch.setattr(Checkpointer, "interval", 0.01)
    path = tmp_path / "idle.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await migrate(db, MIGRATIONS)
    await db.run(write_one)
    (checkpointer,) = Checkpointer._running[asyncio.get_running_loop()].values()

    async def settled() -> int:
        for _ in range(500):
            if checkpointer.caught_up:
                return checkpointer.passive
            await asyncio.sleep(0.01)
        raise AssertionError("the log was never wholly copied")

    passes = await settled()
    for _ in range(20):
        async with db.read(may_lag=False) as conn:
            assert await conn.scalar(select(func.count()).select_from(visits)) == 1
        await asyncio.sleep(0.01)
    assert checkpointer.passive == passes  # 0.2 s idle: no pass
    writes = checkpointer.writes

    async def write_another(tx: Tx) -> None:
        await insert_ignore(await tx.main(), visits, [_row(501)])

    await db.run(write_another)
    assert checkpointer.writes == writes + 1
    assert await settled() > passes  # the new write was copied by a pass of its own
    await db.dispose()


async def test_the_log_is_checkpointed_in_the_background_and_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes that never pause would never let a passive checkpoint finish the log: the
    checkpointer restarts it once it passes its limit, so the file stops growing."""
    monkeypatch.setattr(Checkpointer, "interval", 0.01)
    monkeypatch.setattr(Checkpointer, "restart_pages", 64)
    path = tmp_path / "log.db"
    db = Database(f"sqlite+aiosqlite:///{path}")
    await migrate(db, MIGRATIONS)
    payload = "x" * 3000  # most of a page per row

    async def write(start: int) -> None:
        async def work(tx: Tx) -> None:
            rows = [
                {**_row(i), "name": f"{payload}{i}"[-32:], "kind": "plain"}
                for i in range(start, start + 4)
            ]
            await insert_ignore(await tx.main(), visits, rows)
            await upsert_add(await tx.main(), visits, rows, ["id"], ["hits"])

        await db.run(work)

    async def writer(offset: int) -> None:
        for batch in range(150):
            await write(100_000 * offset + 4 * batch)

    wal = f"{path}-wal"
    await asyncio.gather(*(writer(k) for k in range(4)))
    checkpointers = [c for c in Checkpointer._running[asyncio.get_running_loop()].values()]
    assert [c.path for c in checkpointers] == [str(path)]
    assert checkpointers[0].passive >= 1 and checkpointers[0].restarts >= 1
    # 600 transactions wrote well over 2,400 pages; restarted at 64, the log file holds what
    # a few checkpoint intervals write, a fraction of that.
    assert await asyncio.to_thread(os.path.getsize, wal) < 800 * 4096
    async with db.read(may_lag=False) as conn:
        assert await conn.scalar(select(func.count()).select_from(visits)) == 2400
        # A restarted log keeps its file up to a quarter over the restart size (64 pages
        # here), so the next writes overwrite blocks the file has instead of growing it.
        assert await conn.scalar(text("PRAGMA journal_size_limit")) == 64 * 4096 * 5 // 4
    await db.dispose()
    # The last connection closed: the checkpointer ends.
    await asyncio.sleep(0.05)
    assert checkpointers[0].task is not None and checkpointers[0].task.done()
