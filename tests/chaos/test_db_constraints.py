"""The database itself is the last line (ARCHITECTURE §6): written around the service code,
straight into the tables, a duplicate idempotency key, a transfer of a non-positive amount or
with the same debit and credit account, a second withdrawal under the same idempotency key,
and any UPDATE or DELETE of a ledger row are refused, on SQLite and MariaDB alike."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from libs.common.db.engine import Database
from libs.common.db.migrations import migrate
from libs.common.messaging.outbox import utcnow
from services.commission.migrations import MIGRATIONS, ensure_monthly_tables
from services.commission.models import tables_for
from services.commission.withdrawals.models import withdrawals

ZONE = "Asia/Shanghai"


@pytest.fixture
async def ledger(db: Database) -> Any:
    await migrate(db, MIGRATIONS)
    tables = tables_for(ZONE)
    await ensure_monthly_tables(db, tables, datetime.now(UTC), months_ahead=0)
    return tables.flows.for_time(datetime.now(UTC))


def _transfer(n: int, **changes: Any) -> dict[str, Any]:
    row = {
        "id": 1_000 + n,
        "transaction_id": 2_000 + n,
        "idempotency_key": f"accrue:{n}:1:1",
        "kind": "accrue",
        "debit_account": "platform:expense",
        "credit_account": "promoter:7:frozen",
        "amount": 1_000,
        "currency": "CNY",
        "created_at": utcnow(),
    }
    row.update(changes)
    return row


async def _insert(db: Database, table: Any, row: dict[str, Any]) -> None:
    async with db.primary.begin() as conn:
        await conn.execute(table.insert().values(**row))


async def test_a_well_formed_transfer_goes_in(db: Database, ledger: Any) -> None:
    # The baseline: the refusals below are about the one bad value, not the row's shape.
    await _insert(db, ledger, _transfer(1))
    async with db.primary.connect() as conn:
        assert await conn.scalar(text(f"SELECT COUNT(*) FROM {ledger.name}")) == 1


async def test_a_duplicate_idempotency_key_is_refused(db: Database, ledger: Any) -> None:
    await _insert(db, ledger, _transfer(1))
    with pytest.raises(IntegrityError):
        await _insert(db, ledger, _transfer(2, idempotency_key="accrue:1:1:1"))


@pytest.mark.parametrize("amount", [0, -1, -1_000])
async def test_a_non_positive_amount_is_refused(db: Database, ledger: Any, amount: int) -> None:
    # SQLite says "CHECK constraint failed: <name>", MariaDB "CONSTRAINT `<name>` failed"
    # (an OperationalError there): the constraint's name is what both report.
    with pytest.raises(DBAPIError, match=f"ck_{ledger.name}_positive"):
        await _insert(db, ledger, _transfer(1, amount=amount))


async def test_the_same_debit_and_credit_account_is_refused(db: Database, ledger: Any) -> None:
    with pytest.raises(DBAPIError, match=f"ck_{ledger.name}_two_sides"):
        await _insert(
            db,
            ledger,
            _transfer(1, debit_account="promoter:7:frozen", credit_account="promoter:7:frozen"),
        )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE {table} SET amount = amount + 1",
        "UPDATE {table} SET kind = 'x'",
        "DELETE FROM {table}",
    ],
)
async def test_ledger_rows_cannot_be_updated_or_deleted(
    db: Database, ledger: Any, statement: str
) -> None:
    await _insert(db, ledger, _transfer(1))
    with pytest.raises(DBAPIError, match="append-only"):
        async with db.primary.begin() as conn:
            await conn.execute(text(statement.format(table=ledger.name)))
    async with db.primary.connect() as conn:
        amount = await conn.scalar(text(f"SELECT amount FROM {ledger.name}"))
    assert amount == 1_000


def _withdrawal(n: int, **changes: Any) -> dict[str, Any]:
    now = utcnow()
    row = {
        "id": 5_000 + n,
        "promoter_id": 7,
        "idempotency_key": "once",
        "channel": "wechat",
        "currency": "CNY",
        "amount": 10_000,
        "fee_bps": 0,
        "fee_amount": 0,
        "tax_amount": 0,
        "net_amount": 10_000,
        "tax_withholding": "none",
        "tax_month": now.strftime("%Y%m"),
        "business_day": now.strftime("%Y%m%d"),
        "status": "pending",
        "payout_attempts": 0,
        "requested_at": now,
        "updated_at": now,
    }
    row.update(changes)
    return row


async def test_a_second_withdrawal_under_the_same_idempotency_key_is_refused(
    db: Database, ledger: Any
) -> None:
    await _insert(db, withdrawals, _withdrawal(1))
    with pytest.raises(IntegrityError):
        await _insert(db, withdrawals, _withdrawal(2))
    # Another promoter may use the same key.
    await _insert(db, withdrawals, _withdrawal(3, promoter_id=8))


@pytest.mark.parametrize("amount", [0, -100])
async def test_a_withdrawal_of_a_non_positive_amount_is_refused(
    db: Database, ledger: Any, amount: int
) -> None:
    with pytest.raises(DBAPIError, match=r"ck_withdrawal_(amount|net)"):
        await _insert(db, withdrawals, _withdrawal(1, amount=amount, net_amount=amount))
