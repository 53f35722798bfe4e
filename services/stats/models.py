"""Tables of the stats service (ARCHITECTURE §7).

``promoter_stats_{0..15}`` and ``promoter_team_stats_{0..15}`` are keyed by the promoter
(shard = promoter_id % 16). The facts we consumed (orders, refunds, commission changes) and
the relation projection live in the main database: they feed late refunds, the team fan-out
and reconciliation (docs/decisions/0401-stats-facts-and-team.md).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Index,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from libs.common.db.sharding import ShardedTable
from libs.common.messaging.outbox import AutoId

# The figures every stats row carries; amounts in minor units.
FIGURES = (
    "order_count",
    "order_amount",
    "commission_amount",
    "settled_commission_amount",
    "new_customers",
)

# Team scopes: the team member sits 1 level below, 2 levels below, or anywhere below.
TEAM_SCOPES = ("level1", "level2", "team")


def _figure_columns() -> list[Column[int]]:
    return [Column(name, BigInteger, nullable=False, default=0) for name in FIGURES]


def _promoter_stats(name: str, metadata: MetaData) -> Table:
    return Table(
        name,
        metadata,
        Column("id", AutoId, primary_key=True, autoincrement=True),
        Column("promoter_id", BigInteger, nullable=False),
        Column("day", Date, nullable=False),
        *_figure_columns(),
        UniqueConstraint("promoter_id", "day", name=f"uq_{name}_promoter_day"),
    )


def _team_stats(name: str, metadata: MetaData) -> Table:
    return Table(
        name,
        metadata,
        Column("id", AutoId, primary_key=True, autoincrement=True),
        Column("promoter_id", BigInteger, nullable=False),
        Column("day", Date, nullable=False),
        Column("scope", String(8), nullable=False),
        *_figure_columns(),
        UniqueConstraint("promoter_id", "day", "scope", name=f"uq_{name}_promoter_day_scope"),
    )


promoter_stats = ShardedTable("promoter_stats", _promoter_stats)
promoter_team_stats = ShardedTable("promoter_team_stats", _team_stats)

metadata = MetaData()

# An order as payment attributed it: late refunds find their promoter here.
stats_orders = Table(
    "stats_orders",
    metadata,
    Column("order_id", BigInteger, primary_key=True, autoincrement=False),
    Column("promoter_id", BigInteger, nullable=True),
    Column("buyer_user_id", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("paid_day", Date, nullable=False, index=True),
    Column("paid_amount", BigInteger, nullable=False),
    Column("refunded_amount", BigInteger, nullable=False, default=0),
    # The attribution snapshot's beneficiaries, nearest first: the team fan-out's fallback
    # when the buyer's bind has not reached us.
    Column("beneficiary_ids", Text, nullable=True),
)

# Each refund once; ``applied`` is false while its order.paid has not arrived yet.
stats_refunds = Table(
    "stats_refunds",
    metadata,
    Column("refund_id", BigInteger, primary_key=True, autoincrement=False),
    Column("order_id", BigInteger, nullable=False, index=True),
    Column("day", Date, nullable=False, index=True),
    Column("amount", BigInteger, nullable=False),
    Column("applied", Boolean, nullable=False, default=False),
)

# Commission changes per order, beneficiary, kind (accrued | reversed | settled) and day.
stats_order_commissions = Table(
    "stats_order_commissions",
    metadata,
    Column("order_id", BigInteger, primary_key=True, autoincrement=False),
    Column("beneficiary_id", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(8), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("amount", BigInteger, nullable=False),
    Index("ix_stats_order_commissions_day", "day"),
)

# The relation tree as user.events told us: path = ancestors (root first) then self,
# ",1,3,5,". Used off the hot path only: the team fan-out and moves.
team_members = Table(
    "team_members",
    metadata,
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("root_id", BigInteger, nullable=False, index=True),
    Column("path", Text, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

# Facts waiting to reach the ancestors of the user they happened to (the team fan-out).
team_queue = Table(
    "team_queue",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, nullable=False),
    Column("day", Date, nullable=False),
    # Ancestors known from the event, nearest first (a bind's ancestor_ids, an order's
    # beneficiaries): used when the projection does not know the user.
    Column("ancestor_ids", Text, nullable=True),
    *_figure_columns(),
    Column("created_at", DateTime, nullable=False),
)
