"""Schema versions of the user service's database(s)."""

from __future__ import annotations

from sqlalchemy import Index, Table, inspect, text
from sqlalchemy.engine import Connection

from libs.common.db.common_tables import (
    COMMON_MIGRATION,
    outbox_part_use_migration,
    outbox_parts_migration,
)
from libs.common.db.migrations import Migration, MigrationContext, add_missing_columns
from services.user.models import PATH_HEAD_LENGTH, SHARDED, main_metadata, relations, users
from services.user.pii import pii_metadata


async def _user_tables(ctx: MigrationContext) -> None:
    await ctx.create_tables(main_metadata)
    for sharded in SHARDED:
        await ctx.create_sharded(sharded)


_PII_COLUMNS = ("phone_enc", "nickname_enc", "device_id_enc", "phone_index")


async def _pii_at_rest(ctx: MigrationContext) -> None:
    """Sealed personal data and the phone's blind index on every user shard, and the
    progress table of the pass that seals the rows written before (services/user/pii.py).

    DDL only, each part skipped if present (a database created after this step already has
    them): adding nullable columns and an index is quick on MariaDB and SQLite; sealing
    existing rows needs the keys and may take long, so the service does it in the
    background, in resumable batches."""
    await ctx.create_tables(pii_metadata)
    for url, shards in ctx.db.shards_by_url().items():
        async with ctx.db.engine_for_url(url).begin() as conn:
            for shard in shards:
                table = users.for_shard(shard)
                await add_missing_columns(conn, table, _PII_COLUMNS)

                def present(sync: Connection, name: str = table.name) -> set[str]:
                    return {str(i["name"]) for i in inspect(sync).get_indexes(name)}

                indexes = await conn.run_sync(present)
                for index in table.indexes:
                    if index.name not in indexes:

                        def create(sync: Connection, index: Index = index) -> None:
                            index.create(sync)

                        await conn.run_sync(create)


async def _bounded_path_index(ctx: MigrationContext) -> None:
    """SQLite: the subtree index holds the first 255 characters of a path, not the whole of
    it (MySQL/MariaDB already index that prefix: nothing to do there)."""
    if not ctx.db.is_sqlite:
        return
    for url, shards in ctx.db.shards_by_url().items():
        async with ctx.db.engine_for_url(url).begin() as conn:
            for shard in shards:
                name = relations.for_shard(shard).name
                await conn.execute(text(f"DROP INDEX IF EXISTS ix_{name}_path"))
                await conn.execute(
                    text(
                        f"CREATE INDEX IF NOT EXISTS ix_{name}_path_head "
                        f"ON {name} (substr(path, 1, {PATH_HEAD_LENGTH}))"
                    )
                )


async def _rowid_keys(ctx: MigrationContext) -> None:
    """SQLite: rebuild each sharded table whose primary key is not yet INTEGER (its rowid; see
    ``RowId`` in models.py). Each table is renamed, created anew with its indexes, filled
    from the old one and the old one dropped, all of a database in one transaction; a table
    created after this step is already in the new form and is skipped. MySQL/MariaDB: nothing
    to do. The copy reads and writes every row once: minutes for millions of rows."""
    if not ctx.db.is_sqlite:
        return
    for url, shards in ctx.db.shards_by_url().items():
        async with ctx.db.engine_for_url(url).begin() as conn:
            for sharded in SHARDED:
                for shard in shards:
                    await conn.run_sync(_rebuild_with_rowid_key, sharded.for_shard(shard))


def _rebuild_with_rowid_key(sync: Connection, table: Table) -> None:
    columns = sync.exec_driver_sql(f'PRAGMA table_info("{table.name}")').all()
    keys = [column for column in columns if column.pk]
    if len(keys) == 1 and keys[0].type.upper() == "INTEGER":
        return
    indexes = sync.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
        (table.name,),
    ).all()
    for (index,) in indexes:  # their names are taken again by the new table's indexes
        sync.exec_driver_sql(f'DROP INDEX "{index}"')
    old = f"{table.name}__before_rowid"
    sync.exec_driver_sql(f'ALTER TABLE "{table.name}" RENAME TO "{old}"')
    table.create(sync)
    names = ", ".join(f'"{column.name}"' for column in columns if column.name in table.c)
    sync.exec_driver_sql(f'INSERT INTO "{table.name}" ({names}) SELECT {names} FROM "{old}"')
    sync.exec_driver_sql(f'DROP TABLE "{old}"')


MIGRATIONS: list[Migration] = [
    COMMON_MIGRATION,
    Migration(2, "users, promoters, relation tree, team counts, bind history, jobs", _user_tables),
    Migration(3, "personal data sealed at rest, phone blind index", _pii_at_rest),
    Migration(
        4, "SQLite: subtree index on the first 255 characters of a path", _bounded_path_index
    ),
    Migration(5, "SQLite: sharded tables keyed by their rowid", _rowid_keys),
    outbox_parts_migration(6),
    outbox_part_use_migration(7),
]
