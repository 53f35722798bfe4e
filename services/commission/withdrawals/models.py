"""Tables of withdrawals, payee details and payouts (main database of the commission service).

Withdrawals are few next to orders (a promoter withdraws a few times a month), and the audit
queue lists them across promoters in time order, so they live in one table in the main
database rather than in the 16 promoter shards (docs/decisions/0701-withdrawal-storage.md).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
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

# pending → approved → paid; approved → failed → (retry) approved/paid;
# pending → rejected | cancelled.
STATUSES = ("pending", "approved", "paid", "failed", "rejected", "cancelled")
# The withdrawals a month's tax and a day's limit count: not rejected, not cancelled.
COUNTED_STATUSES = ("pending", "approved", "paid", "failed")

metadata = MetaData()

# Every personal field is AES-GCM ciphertext (crypto.py); nothing here is readable as is.
payees = Table(
    "withdrawal_payee",
    metadata,
    Column("promoter_id", BigInteger, primary_key=True, autoincrement=False),
    Column("real_name", Text, nullable=False),
    Column("id_number", Text, nullable=False),
    Column("bank_card", Text, nullable=True),
    Column("bank_name", String(64), nullable=True),
    Column("wechat_openid", Text, nullable=True),
    Column("alipay_account", Text, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

withdrawals = Table(
    "withdrawal",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("promoter_id", BigInteger, nullable=False),
    Column("idempotency_key", String(128), nullable=False),
    Column("channel", String(16), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("fee_bps", Integer, nullable=False),
    Column("fee_amount", BigInteger, nullable=False),
    Column("tax_amount", BigInteger, nullable=False),
    Column("net_amount", BigInteger, nullable=False),
    Column("tax_withholding", String(16), nullable=False),  # cn_labor | none
    Column("tax_month", String(6), nullable=False),  # YYYYMM, business timezone
    Column("business_day", String(8), nullable=False),  # YYYYMMDD, business timezone
    Column("status", String(16), nullable=False),
    Column("reason", String(500), nullable=True),  # rejection reason / failure reason
    Column("audited_by", String(191), nullable=True),
    # The provider's idempotency key of the current payout attempt (≤ 32 characters).
    Column("payout_id", String(32), nullable=True),
    Column("payout_provider", String(16), nullable=True),
    Column("payout_attempts", Integer, nullable=False, default=0),
    Column("payout_reference", String(128), nullable=True),  # provider bill / voucher
    Column("requested_at", DateTime, nullable=False),
    Column("audited_at", DateTime, nullable=True),
    Column("paid_at", DateTime, nullable=True),
    Column("updated_at", DateTime, nullable=False),
    UniqueConstraint("promoter_id", "idempotency_key", name="uq_withdrawal_idempotency"),
    Index("ix_withdrawal_status", "status", "id"),
    Index("ix_withdrawal_promoter_month", "promoter_id", "tax_month"),
    Index("ix_withdrawal_promoter_day", "promoter_id", "business_day"),
    CheckConstraint("amount > 0", name="ck_withdrawal_amount"),
    CheckConstraint("net_amount > 0", name="ck_withdrawal_net"),
    CheckConstraint(
        "fee_amount >= 0 AND tax_amount >= 0 AND fee_amount + tax_amount + net_amount = amount",
        name="ck_withdrawal_parts",
    ),
)

# One row per promoter: the point that serialises a promoter's withdrawal requests and
# audits (the month's tax and the day's limit are read and decided under it).
withdrawal_locks = Table(
    "withdrawal_promoter_lock",
    metadata,
    Column("promoter_id", BigInteger, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
)

# Every payout attempt, kept: which payout id went to which provider and what came back.
payout_attempts = Table(
    "withdrawal_payout",
    metadata,
    Column("payout_id", String(32), primary_key=True),
    Column("withdrawal_id", BigInteger, nullable=False, index=True),
    Column("provider", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False),  # sent | processing | paid | failed
    Column("provider_reference", String(128), nullable=True),
    Column("failure_reason", String(500), nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)
