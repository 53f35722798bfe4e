"""Tables of the order service: orders, their items and refunds, sharded by the buyer's gene
(``orders_{n}``, ``order_items_{n}``, ``refunds_{n}``, n = buyer id % 16). An order id takes
its buyer's gene, so ``order_id % 16`` finds the shard of the order, its items and refunds.
(platform, order_no) → order id lives in the global index of the main database."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from libs.common.db.sharding import ShardedTable

ORDER_NO_INDEX = "order_no"  # global index kind: "{platform}\x1f{order_no}" → order id

CREATED, PAID, COMPLETED, CLOSED = "created", "paid", "completed", "closed"
RESOLVED, PENDING, NONE = "resolved", "pending", "none"


def _orders(name: str, metadata: MetaData) -> Table:
    return Table(
        name,
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("platform", String(32), nullable=False),
        Column("order_no", String(128), nullable=False),
        Column("buyer_user_id", BigInteger, nullable=False),
        Column("currency", String(3), nullable=False),
        Column("status", String(16), nullable=False),
        Column("promoter_code", String(64), nullable=True),
        Column("promoter_id", BigInteger, nullable=True),
        # JSON list of {level, user_id}: the snapshot taken once, never rewritten afterwards.
        Column("beneficiaries", Text, nullable=False),
        Column("attribution_status", String(16), nullable=False),
        Column("attribution_attempts", Integer, nullable=False, default=0),
        Column("attribution_next_at", DateTime, nullable=True),
        Column("shipping_amount", BigInteger, nullable=False),
        Column("paid_amount", BigInteger, nullable=False),
        Column("refunded_amount", BigInteger, nullable=False),
        # sha256 of the canonical intake body: a replay with another body is a conflict.
        Column("fingerprint", String(64), nullable=False),
        Column("created_at", DateTime, nullable=False),
        Column("paid_at", DateTime, nullable=True),
        Column("completed_at", DateTime, nullable=True),
        Column("closed_at", DateTime, nullable=True),
        Column("auto_completed", Boolean, nullable=False, default=False),
        Index(f"ix_{name}_status_paid", "status", "paid_at"),
        Index(f"ix_{name}_attribution", "attribution_status", "attribution_next_at"),
        Index(f"ix_{name}_buyer", "buyer_user_id", "id"),
    )


def _order_items(name: str, metadata: MetaData) -> Table:
    return Table(
        name,
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("order_id", BigInteger, nullable=False),
        Column("line_no", Integer, nullable=False),
        Column("sku", String(128), nullable=False),
        Column("category", String(128), nullable=False),
        Column("quantity", Integer, nullable=False),
        Column("unit_price_amount", BigInteger, nullable=False),
        Column("paid_amount", BigInteger, nullable=False),
        Column("refunded_amount", BigInteger, nullable=False),
        UniqueConstraint("order_id", "sku", name=f"uq_{name}_order_sku"),
    )


def _refunds(name: str, metadata: MetaData) -> Table:
    return Table(
        name,
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("order_id", BigInteger, nullable=False),
        Column("refund_no", String(128), nullable=False),
        Column("amount", BigInteger, nullable=False),
        # JSON list of {item_id, sku, refunded_amount, remaining_paid_amount}: the event data.
        Column("items", Text, nullable=False),
        Column("fingerprint", String(64), nullable=False),
        Column("created_at", DateTime, nullable=False),
        UniqueConstraint("order_id", "refund_no", name=f"uq_{name}_refund_no"),
    )


orders_metadata = MetaData()
orders = ShardedTable("orders", _orders, orders_metadata)
order_items = ShardedTable("order_items", _order_items, orders_metadata)
refunds = ShardedTable("refunds", _refunds, orders_metadata)
