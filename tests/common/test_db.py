from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.engine import Database, Tx
from libs.common.db.global_index import claim, global_index_metadata, lookup
from libs.common.db.migrations import Migration, MigrationContext, migrate
from libs.common.db.sharding import MonthlyTables, ShardedTable, add_months, month_key
from libs.common.db.sql import insert_ignore, upsert_add
from libs.common.ids import IdGenerator, shard_of


def _account_table(name: str, metadata: MetaData) -> Table:
    return Table(
        name,
        metadata,
        Column("user_id", BigInteger, primary_key=True, autoincrement=False),
        Column("balance_amount", BigInteger, nullable=False),
        Column("label", String(32), nullable=False, server_default=""),
    )


accounts = ShardedTable("account", _account_table)
counter_meta = MetaData()
counters = Table(
    "counters",
    counter_meta,
    Column("name", String(32), primary_key=True),
    Column("value", Integer, nullable=False),
)


async def _schema(ctx: MigrationContext) -> None:
    await ctx.create_tables(global_index_metadata)
    await ctx.create_tables(counter_meta)
    await ctx.create_sharded(accounts)


MIGRATIONS = [Migration(1, "test schema", _schema)]


async def test_migrations_apply_once(db: Database) -> None:
    assert await migrate(db, MIGRATIONS) == [1]
    assert await migrate(db, MIGRATIONS) == []
    async with db.read(may_lag=False) as conn:
        for shard in (0, 7, 15):
            await conn.execute(select(func.count()).select_from(accounts.for_shard(shard)))


async def test_transaction_commits_or_rolls_back_whole(db: Database) -> None:
    await migrate(db, MIGRATIONS)
    ids = IdGenerator(1)
    user_id = ids.next_id()

    async def write(tx: Tx) -> None:
        conn = await tx.shard(shard_of(user_id))
        await conn.execute(
            accounts.for_id(user_id).insert().values(user_id=user_id, balance_amount=5)
        )
        await (await tx.main()).execute(counters.insert().values(name="a", value=1))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await db.run(write)
    async with db.read(may_lag=False) as conn:
        assert await conn.scalar(select(func.count()).select_from(accounts.for_id(user_id))) == 0
        assert await conn.scalar(select(func.count()).select_from(counters)) == 0


async def test_insert_ignore_and_upsert_add(db: Database) -> None:
    await migrate(db, MIGRATIONS)

    async def work(tx: Tx) -> tuple[int, int]:
        conn = await tx.main()
        first = await insert_ignore(
            conn, counters, [{"name": "x", "value": 1}, {"name": "y", "value": 2}]
        )
        second = await insert_ignore(
            conn, counters, [{"name": "x", "value": 9}, {"name": "z", "value": 3}]
        )
        await upsert_add(
            conn,
            counters,
            [{"name": "x", "value": 10}, {"name": "w", "value": 4}],
            ["name"],
            ["value"],
        )
        return first, second

    assert await db.run(work) == (2, 1)
    async with db.read(may_lag=False) as conn:
        rows = dict((await conn.execute(select(counters.c.name, counters.c.value))).all())
    assert rows == {"x": 11, "y": 2, "z": 3, "w": 4}


async def test_global_index_claim_resolves_to_first_owner(db: Database) -> None:
    await migrate(db, MIGRATIONS)

    async def claim_it(owner: int) -> int:
        async def work(tx: Tx) -> int:
            return await claim(await tx.main(), "code", "ABCD2345", owner)

        return await db.run(work)

    assert await claim_it(11) == 11
    assert await claim_it(22) == 11
    async with db.read() as conn:
        assert await lookup(conn, "code", "ABCD2345") == 11
        assert await lookup(conn, "code", "missing") is None


async def test_concurrent_writers_all_succeed(db: Database) -> None:
    """SQLite has one writer: BEGIN IMMEDIATE + retry turn contention into waiting, never an
    error; on MariaDB the same code path runs."""
    await migrate(db, MIGRATIONS)

    async def seed(tx: Tx) -> None:
        await (await tx.main()).execute(counters.insert().values(name="n", value=0))

    await db.run(seed)

    async def increment(tx: Tx) -> None:
        conn = await tx.main()
        value = await conn.scalar(
            select(counters.c.value).where(counters.c.name == "n").with_for_update()
        )
        await asyncio.sleep(0)  # let the others try to interleave
        await conn.execute(counters.update().where(counters.c.name == "n").values(value=value + 1))

    await asyncio.gather(*(db.run(increment) for _ in range(40)))
    async with db.read(may_lag=False) as conn:
        assert await conn.scalar(select(counters.c.value).where(counters.c.name == "n")) == 40


async def test_shard_map_spreads_shards_over_physical_databases(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two SQLite files stand for two physical databases."""
    main_url = f"sqlite+aiosqlite:///{tmp_path / 'main.db'}"
    other_url = f"sqlite+aiosqlite:///{tmp_path / 'odd.db'}"
    db = Database(main_url, shard_map={n: other_url for n in range(1, 16, 2)})
    try:
        await migrate(db, MIGRATIONS)
        ids = IdGenerator(3)
        even_user, odd_user = ids.next_id(gene=4), ids.next_id(gene=5)

        async def write(tx: Tx) -> None:
            for user in (even_user, odd_user):
                conn = await tx.shard(shard_of(user))
                await conn.execute(
                    accounts.for_id(user).insert().values(user_id=user, balance_amount=1)
                )

        await db.run(write)
        other = Database(other_url)
        async with other.read(may_lag=False) as conn:
            assert await conn.scalar(select(func.count()).select_from(accounts.for_shard(5))) == 1
            # Even shards are not created in the odd database at all.
            present = await conn.run_sync(lambda sync: sync.dialect.has_table(sync, "account_4"))
            assert not present
        await other.dispose()
    finally:
        await db.dispose()


def _flow_table(name: str, metadata: MetaData) -> Table:
    return Table(name, metadata, Column("id", BigInteger, primary_key=True, autoincrement=False))


async def test_monthly_tables_are_created_ahead_and_listed(db: Database) -> None:
    await migrate(db, MIGRATIONS)
    zone = ZoneInfo("Asia/Shanghai")
    flows = MonthlyTables("flow", _flow_table, zone)
    now = datetime(2026, 12, 31, 17, 30, tzinfo=UTC)  # already January 1st in Shanghai
    assert month_key(now, zone) == "202701"
    assert add_months("202612", 1) == "202701" and add_months("202701", -1) == "202612"

    async def ensure(tx: Tx) -> None:
        await flows.ensure_ahead(await tx.main(), now, months_ahead=2)

    await db.run(ensure)
    await db.run(ensure)  # idempotent
    async with db.read(may_lag=False) as conn:
        assert await flows.existing_months(conn) == ["202703", "202702", "202701"]
        entity_id = IdGenerator(1).next_id()
        table = flows.for_id(entity_id)
        assert table.name == f"flow_{month_key(datetime.now(UTC), zone)}"


async def test_retry_turns_busy_into_success_on_sqlite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite+aiosqlite:///{tmp_path / 'busy.db'}"
    db = Database(url)
    await migrate(db, MIGRATIONS)
    # Hold the write lock from another connection for a moment.
    holder = Database(url)
    async with holder.primary.connect() as conn:
        await conn.execute(text("SELECT 1"))
        await conn.commit()
    attempts = 0

    async def write(tx: Tx) -> None:
        nonlocal attempts
        attempts += 1
        conn: AsyncConnection = await tx.main()
        await conn.execute(counters.insert().values(name=f"k{attempts}", value=1))

    async def hold() -> None:
        async with holder.primary.begin() as conn:  # BEGIN IMMEDIATE: takes the write lock
            await conn.execute(counters.insert().values(name="holder", value=1))
            await asyncio.sleep(0.5)

    await asyncio.gather(hold(), db.run(write))
    async with db.read(may_lag=False) as conn:
        assert await conn.scalar(select(func.count()).select_from(counters)) == 2
    await holder.dispose()
    await db.dispose()
