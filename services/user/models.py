"""Tables of the user service (ARCHITECTURE §4).

User-keyed tables are sharded by the user id's gene (``<name>_{0..15}``): users, promoters,
the relation tree, team counters and bind history. Move jobs and bulk-import progress live in
the main database beside the global index (promoter codes, ``(platform, external_id)``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    literal_column,
)
from sqlalchemy.dialects import mysql

from libs.common.db.sharding import ShardedTable

# Microseconds on MySQL too, so what a response shows equals what a later read returns and
# guards comparing timestamps see distinct values for changes within one second.
# Microseconds on MySQL too: libs.common.db.engine compiles every DateTime as DATETIME(6).
Moment = DateTime

# The primary key of a sharded table is a 64-bit id. On SQLite it is declared INTEGER, which
# makes it the table's rowid: a row is found and stored in one B-tree instead of a table plus
# a separate unique index (a bind writes about a quarter fewer pages). SQLite's INTEGER holds
# 64 bits; MySQL/MariaDB keep BIGINT.
RowId = BigInteger().with_variant(Integer(), "sqlite")

# The path is ASCII (base-36 ids between commas): about 14 bytes per level, so a
# 1,000-deep path is ~14 KB. MEDIUMTEXT on MySQL (TEXT stops at 64 KB), an ASCII binary
# collation so LIKE 'prefix%' compares bytes, and a 255-character prefix index for the
# subtree scans of moves and rebuilds.
PathText = Text().with_variant(
    mysql.MEDIUMTEXT(charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
)


def _ascii(length: int) -> String:
    """Sealed values and index digests are ASCII: one byte a character on MySQL too."""
    return String(length).with_variant(
        mysql.VARCHAR(length, charset="ascii", collation="ascii_bin"), "mysql", "mariadb"
    )


# Personal fields are sealed (libs/common/crypto.py: ``enc1:<key id>:<base64>``, 28 bytes of
# nonce and tag, base64 grows 4/3): sized for the longest value the API takes in UTF-8.
PII_FIELDS = ("phone", "nickname", "device_id")
SEALED_COLUMNS = {"phone": "phone_enc", "nickname": "nickname_enc", "device_id": "device_id_enc"}


def _user_table(name: str, metadata: MetaData) -> Table:
    return Table(
        name,
        metadata,
        Column("id", RowId, primary_key=True, autoincrement=False),
        Column("platform", String(32), nullable=False),
        Column("external_id", String(128), nullable=False),
        # Legacy plaintext of rows written before migration 3; the background pass of
        # services/user/pii.py seals them and empties these. New rows leave them NULL.
        Column("nickname", String(64), nullable=True),
        Column("phone", String(32), nullable=True),
        Column("device_id", String(128), nullable=True),
        Column("created_at", Moment, nullable=False),
        Column("phone_enc", _ascii(128), nullable=True),  # 32 ASCII characters
        Column("nickname_enc", _ascii(400), nullable=True),  # 64 characters of 4 bytes
        Column("device_id_enc", _ascii(768), nullable=True),  # 128 characters of 4 bytes
        # Blind index of the phone (E.164) for lookups: ``<key id>:<16 hex>``.
        Column("phone_index", _ascii(32), nullable=True),
        Index(f"ix_{name}_phone_index", "phone_index"),
    )


def _promoter_table(name: str, metadata: MetaData) -> Table:
    return Table(
        name,
        metadata,
        Column("user_id", RowId, primary_key=True, autoincrement=False),
        Column("code", String(16), nullable=False),
        # pending | approved | rejected | disabled
        Column("status", String(16), nullable=False),
        Column("tier", String(32), nullable=True),
        # Counts status changes, so each disable/enable event has its own deterministic id.
        Column("status_version", Integer, nullable=False, default=0),
        Column("applied_at", Moment, nullable=False),
        Column("approved_at", Moment, nullable=True),
        Column("updated_at", Moment, nullable=False),
    )


# Subtree scans (move jobs) find paths by their first 255 characters, then compare whole
# paths. MySQL/MariaDB index that prefix of the column; SQLite cannot, so it indexes the
# expression: indexing whole paths there put every deep bind's 14 KB path into the index a
# second time, with comparisons that read kilobytes.
PATH_HEAD_LENGTH = 255


def path_head(path: Any) -> Any:
    """``substr(path, 1, 255)``, spelled with constants so SQLite matches it to its index."""
    return func.substr(path, literal_column("1"), literal_column(str(PATH_HEAD_LENGTH)))


def _not_sqlite(
    ddl: Any,
    target: Any,
    bind: Any,
    tables: Any = None,
    state: Any = None,
    *,
    dialect: Any,
    compiler: Any = None,
    checkfirst: bool = False,
) -> bool:
    return bool(dialect.name != "sqlite")


def _relation_table(name: str, metadata: MetaData) -> Table:
    table = Table(
        name,
        metadata,
        Column("user_id", RowId, primary_key=True, autoincrement=False),
        Column("parent_id", BigInteger, nullable=False),
        Column("root_id", BigInteger, nullable=False),
        Column("level", Integer, nullable=False),
        Column("path", PathText, nullable=False),
        Column("bound_at", Moment, nullable=False),
        Column("bind_source", String(16), nullable=False),
        Column("expires_at", Moment, nullable=True),
        Index(f"ix_{name}_parent", "parent_id", "user_id"),
        Index(f"ix_{name}_path", "path", mysql_length=PATH_HEAD_LENGTH).ddl_if(
            callable_=_not_sqlite
        ),
    )
    Index(f"ix_{name}_path_head", path_head(table.c.path)).ddl_if(dialect="sqlite")
    return table


def _team_table(name: str, metadata: MetaData) -> Table:
    return Table(
        name,
        metadata,
        Column("user_id", RowId, primary_key=True, autoincrement=False),
        Column("level1_count", BigInteger, nullable=False, default=0),
        Column("level2_count", BigInteger, nullable=False, default=0),
        Column("level3_count", BigInteger, nullable=False, default=0),
        Column("team_size", BigInteger, nullable=False, default=0),
    )


def _history_table(name: str, metadata: MetaData) -> Table:
    return Table(
        name,
        metadata,
        Column("id", RowId, primary_key=True, autoincrement=False),
        Column("user_id", BigInteger, nullable=False),
        Column("parent_id", BigInteger, nullable=False),
        Column("previous_parent_id", BigInteger, nullable=True),
        # bind | rebind | move | import
        Column("kind", String(16), nullable=False),
        Column("bind_source", String(16), nullable=False),
        Column("reason", String(255), nullable=True),
        Column("created_at", Moment, nullable=False),
        Index(f"ix_{name}_user", "user_id", "id"),
    )


users = ShardedTable("user", _user_table)
promoters = ShardedTable("promoter", _promoter_table)
relations = ShardedTable("user_relation", _relation_table)
team_counts = ShardedTable("team_count", _team_table)
bind_history = ShardedTable("bind_history", _history_table)

main_metadata = MetaData()
move_jobs = Table(
    "move_jobs",
    main_metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", BigInteger, nullable=False),
    # Every row whose path starts with old_prefix gets new_prefix instead.
    Column("old_prefix", PathText, nullable=False),
    Column("new_prefix", PathText, nullable=False),
    Column("level_delta", Integer, nullable=False),
    Column("new_root_id", BigInteger, nullable=False),
    # JSON lists of ids (nearest first): whose whole-team counts lose / gain the subtree.
    Column("old_ancestor_ids", PathText, nullable=False),
    Column("new_ancestor_ids", PathText, nullable=False),
    Column("status", String(16), nullable=False),  # running | done
    Column("rows_done", BigInteger, nullable=False, default=0),
    Column("reason", String(255), nullable=True),
    Column("created_at", Moment, nullable=False),
    Column("updated_at", Moment, nullable=False),
    Column("finished_at", Moment, nullable=True),
    Index("ix_move_jobs_status", "status", "id"),
)
bulk_imports = Table(
    "bulk_imports",
    main_metadata,
    Column("source", String(191), primary_key=True),
    Column("lines_done", BigInteger, nullable=False, default=0),
    Column("imported", BigInteger, nullable=False, default=0),
    Column("refused", BigInteger, nullable=False, default=0),
    Column("status", String(16), nullable=False),
    Column("updated_at", Moment, nullable=False),
)

SHARDED = (users, promoters, relations, team_counts, bind_history)
