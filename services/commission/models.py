"""Tables of the commission service (ARCHITECTURE §6).

Main database: rules, the promoter-status projection, one claim row per order
(``commission_order``: accrual exactly once, completion, settlement), refund claims.
Sharded by promoter: ``commission_account_{n}``, the balance row per promoter that moves in the
same transaction as its ledger transfers and holds the head of the promoter's hash chain.
Monthly: ``commission_record_YYYYMM`` (one per order item and level) and the ledger
``commission_flow_YYYYMM`` (append-only transfers; triggers refuse UPDATE and DELETE).

Index and CHECK names carry the table name: SQLite index names and MySQL constraint names are
unique per database, not per table.
"""

from __future__ import annotations

from functools import lru_cache
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
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

from libs.common.db.sharding import MonthlyTables, ShardedTable
from libs.common.messaging.outbox import LongText

# Microseconds on MySQL too (its plain DATETIME drops them): due times compare exactly.
# Microseconds on MySQL too: libs.common.db.engine compiles every DateTime as DATETIME(6).
Moment = DateTime

RECORD_STATUSES = ("frozen", "settled", "reversed", "held", "void")

metadata = MetaData()

commission_rules = Table(
    "commission_rule",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("scope", String(16), nullable=False),  # default | category | product
    Column("scope_key", String(191), nullable=False),  # "" for the default scope
    Column("version", Integer, nullable=False),
    # JSON list of {level, rate_bps, cap_amount, fixed_amount}
    Column("levels", Text, nullable=False),
    Column("effective_from", Moment, nullable=False),
    Column("created_at", Moment, nullable=False),
    Column("deactivated_at", Moment, nullable=True),
    UniqueConstraint("scope", "scope_key", "version", name="uq_commission_rule_version"),
)

# The commission service's own view of promoters, fed by user.events.
promoter_status = Table(
    "commission_promoter_status",
    metadata,
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("status", String(16), nullable=False),  # approved | disabled
    Column("tier", String(32), nullable=True),
    Column("changed_at", Moment, nullable=False),
)

# One row per order that has (or will have) commissions: the global claim that makes accrual
# exactly once across monthly tables, and the settlement schedule.
commission_orders = Table(
    "commission_order",
    metadata,
    Column("order_id", BigInteger, primary_key=True, autoincrement=False),
    Column("record_month", String(6), nullable=True),  # which commission_record_YYYYMM
    Column("currency", String(3), nullable=False),
    Column("paid_at", Moment, nullable=True),
    Column("accrued_at", Moment, nullable=True),
    Column("completed_at", Moment, nullable=True),
    Column("unfreeze_at", Moment, nullable=True),
    Column("enqueued_at", Moment, nullable=True),
    Column("settled_at", Moment, nullable=True),
    Index("ix_commission_order_due", "settled_at", "unfreeze_at"),
)

# One row per settlement batch, written in the batch's own transaction (so a batch that
# rolled back leaves no trace): when it ran and what it moved.
settle_batch_metadata = MetaData()
settle_batches = Table(
    "commission_settle_batch",
    settle_batch_metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("settled_at", Moment, nullable=False),
    Column("order_count", Integer, nullable=False),
    Column("record_count", Integer, nullable=False),
    Column("promoter_count", Integer, nullable=False),
    Column("amount", BigInteger, nullable=False),
)

commission_refunds = Table(
    "commission_refund",
    metadata,
    Column("refund_id", BigInteger, primary_key=True, autoincrement=False),
    Column("order_id", BigInteger, nullable=False),
    Column("processed_at", Moment, nullable=False),
)

# A refund that arrived before its order's order.paid had been applied (a broker that lost
# its memory can be sent the refund again before the relay republishes the order.paid):
# kept here, and applied by the accrual that creates the order's records (decision 0305).
commission_refunds_waiting = Table(
    "commission_refund_waiting",
    metadata,
    Column("refund_id", BigInteger, primary_key=True, autoincrement=False),
    Column("order_id", BigInteger, nullable=False, index=True),
    Column("payload", LongText, nullable=False),
    Column("received_at", Moment, nullable=False, index=True),
)


def _account_table(name: str, md: MetaData) -> Table:
    return Table(
        name,
        md,
        Column("promoter_id", BigInteger, primary_key=True, autoincrement=False),
        Column("currency", String(3), nullable=False),
        Column("frozen_amount", BigInteger, nullable=False, default=0),
        # May go negative after a clawback; withdrawals then wait until earnings cover it.
        Column("available_amount", BigInteger, nullable=False, default=0),
        Column("withdrawing_amount", BigInteger, nullable=False, default=0),
        Column("paid_out_amount", BigInteger, nullable=False, default=0),
        Column("chain_head", String(64), nullable=False, default=""),
        Column("chain_length", BigInteger, nullable=False, default=0),
        Column("updated_at", Moment, nullable=False),
        CheckConstraint("frozen_amount >= 0", name=f"ck_{name}_frozen"),
        CheckConstraint("withdrawing_amount >= 0", name=f"ck_{name}_withdrawing"),
        CheckConstraint("paid_out_amount >= 0", name=f"ck_{name}_paid_out"),
    )


accounts = ShardedTable("commission_account", _account_table)


def _record_table(name: str, md: MetaData) -> Table:
    return Table(
        name,
        md,
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("order_id", BigInteger, nullable=False),
        Column("item_id", BigInteger, nullable=False),
        Column("sku", String(191), nullable=False),
        Column("category", String(191), nullable=False),
        Column("level", Integer, nullable=False),
        Column("beneficiary_id", BigInteger, nullable=False),
        Column("buyer_user_id", BigInteger, nullable=False),
        Column("currency", String(3), nullable=False),
        Column("quantity", Integer, nullable=False),
        Column("item_paid_amount", BigInteger, nullable=False),  # the item's paid amount
        Column("base_amount", BigInteger, nullable=False),  # still paid (after refunds)
        Column("rate_bps", Integer, nullable=True),
        Column("cap_amount", BigInteger, nullable=True),
        Column("fixed_amount", BigInteger, nullable=True),
        Column("accrued_amount", BigInteger, nullable=False),
        Column("reversed_amount", BigInteger, nullable=False, default=0),
        Column("amount", BigInteger, nullable=False),  # accrued − reversed
        Column("status", String(16), nullable=False),
        Column("clamped", Boolean, nullable=False, default=False),
        Column("note", String(64), nullable=True),
        Column("rule_id", BigInteger, nullable=True),
        Column("rule_version", Integer, nullable=True),
        Column("paid_at", Moment, nullable=False),
        Column("created_at", Moment, nullable=False),
        Column("unfreeze_at", Moment, nullable=True),
        Column("settled_at", Moment, nullable=True),
        Column("updated_at", Moment, nullable=False),
        # The settlement batch that moved this record frozen → settled, and the amount it
        # moved then (later clawbacks lower ``amount``, not this): the batch's ledger
        # transfer per promoter carries the sum of these (docs/decisions/0304).
        Column("settle_batch_id", BigInteger, nullable=True),
        Column("settled_amount", BigInteger, nullable=True),
        UniqueConstraint("order_id", "item_id", "level", name=f"uq_{name}_line"),
        Index(f"ix_{name}_beneficiary", "beneficiary_id", "id"),
        CheckConstraint("amount >= 0", name=f"ck_{name}_amount"),
        CheckConstraint("amount <= accrued_amount", name=f"ck_{name}_not_above_accrued"),
        CheckConstraint(
            "amount <= base_amount OR fixed_amount IS NOT NULL", name=f"ck_{name}_base"
        ),
        CheckConstraint(
            "status IN ('frozen','settled','reversed','held','void')", name=f"ck_{name}_status"
        ),
    )


def _flow_table(name: str, md: MetaData) -> Table:
    return Table(
        name,
        md,
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        # Transfers of one business transaction share it (an accrual of one order, ...).
        Column("transaction_id", BigInteger, nullable=False),
        Column("idempotency_key", String(191), nullable=False),
        Column("kind", String(16), nullable=False),  # accrue | settle | reverse | withdraw ...
        Column("debit_account", String(64), nullable=False),
        Column("credit_account", String(64), nullable=False),
        Column("amount", BigInteger, nullable=False),
        Column("currency", String(3), nullable=False),
        Column("order_id", BigInteger, nullable=True),
        Column("record_id", BigInteger, nullable=True),
        # The promoter whose chain this transfer extends (none for platform-only transfers).
        Column("promoter_id", BigInteger, nullable=True),
        Column("chain_seq", BigInteger, nullable=True),
        Column("prev_hash", String(64), nullable=True),
        Column("hash", String(64), nullable=True),
        Column("created_at", Moment, nullable=False),
        UniqueConstraint("idempotency_key", name=f"uq_{name}_key"),
        Index(f"ix_{name}_chain", "promoter_id", "chain_seq"),
        CheckConstraint("amount > 0", name=f"ck_{name}_positive"),
        CheckConstraint("debit_account <> credit_account", name=f"ck_{name}_two_sides"),
    )


class CommissionTables:
    """The monthly tables of one business timezone."""

    def __init__(self, zone: ZoneInfo) -> None:
        self.zone = zone
        self.records = MonthlyTables("commission_record", _record_table, zone)
        self.flows = MonthlyTables("commission_flow", _flow_table, zone)


@lru_cache
def tables_for(zone_name: str) -> CommissionTables:
    return CommissionTables(ZoneInfo(zone_name))
