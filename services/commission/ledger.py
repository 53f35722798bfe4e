"""The ledger (``commission_flow_YYYYMM``): append-only double entry kept as transfers.

Each transfer moves a positive amount from a debit account to a credit account, so every row
balances by construction (the database enforces ``amount > 0`` and debit ≠ credit; triggers
refuse UPDATE and DELETE). A business transaction is one or more transfers sharing a
``transaction_id``; each has a deterministic, unique idempotency key.

Promoter accounts (frozen, available, withdrawing, paid_out) also have a balance row per
promoter (``commission_account_{n}``), moved in the same database transaction as the
transfers; the row holds the head of that promoter's hash chain, and every transfer touching
the promoter carries the previous transfer's hash. A transfer never touches two promoters,
and platform accounts (expense, fee income, tax payable, payout clearing) are never a chain
head and have no balance row: their balances are aggregated from the transfers, so there is
no global serialisation point.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.engine import Database, Tx
from libs.common.db.sql import upsert_replace
from libs.common.ids import IdGenerator, shard_of
from libs.common.messaging.outbox import utcnow
from services.commission.accounts import lock_accounts
from services.commission.models import CommissionTables, accounts

T = TypeVar("T")

BUCKETS = ("frozen", "available", "withdrawing", "paid_out")
PLATFORM_EXPENSE = "platform:expense"
PLATFORM_FEE_INCOME = "platform:fee_income"
PLATFORM_TAX_PAYABLE = "platform:tax_payable"
PLATFORM_PAYOUT_CLEARING = "platform:payout_clearing"


class StaleWrite(Exception):
    """A guarded update found the row changed since it was read: run the work again."""


def promoter_account(promoter_id: int, bucket: str) -> str:
    if bucket not in BUCKETS:
        raise ValueError(f"unknown promoter account bucket {bucket}")
    return f"promoter:{promoter_id}:{bucket}"


def parse_promoter_account(account: str) -> tuple[int, str] | None:
    """``promoter:{id}:{bucket}`` → (id, bucket); None for a platform account."""
    if not account.startswith("promoter:"):
        return None
    parts = account.split(":")
    if len(parts) == 3 and parts[0] == "promoter":
        return int(parts[1]), parts[2]
    return None


@dataclass
class Transfer:
    kind: str
    key: str
    debit: str
    credit: str
    amount: int
    currency: str
    order_id: int | None = None
    record_id: int | None = None
    promoter_id: int | None = field(default=None)
    # Balance-row changes of the promoter: {"frozen_amount": +amount, ...}.
    deltas: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.amount <= 0:
            raise ValueError("a transfer moves a positive amount")
        if self.debit == self.credit:
            raise ValueError("a transfer needs two different accounts")
        touched = set()
        for account, sign in ((self.credit, 1), (self.debit, -1)):
            parsed = parse_promoter_account(account)
            if parsed is not None:
                touched.add(parsed[0])
                column = f"{parsed[1]}_amount"
                self.deltas[column] = self.deltas.get(column, 0) + sign * self.amount
        if len(touched) > 1:
            raise ValueError("a transfer never touches two promoters")
        self.promoter_id = next(iter(touched), None)


def chain_hash(
    prev_hash: str,
    transfer_id: int,
    chain_seq: int,
    key: str,
    debit: str,
    credit: str,
    amount: int,
    currency: str,
    transaction_id: int,
) -> str:
    material = "|".join(
        [
            prev_hash,
            str(transfer_id),
            str(chain_seq),
            key,
            debit,
            credit,
            str(amount),
            currency,
            str(transaction_id),
        ]
    )
    return hashlib.sha256(material.encode()).hexdigest()


async def post_transfers(
    tx: Tx,
    ids: IdGenerator,
    tables: CommissionTables,
    transfers: Sequence[Transfer],
    now: datetime | None = None,
    transaction_ids: Sequence[int] | None = None,
) -> None:
    """Append transfers and move the promoters' balance rows in this transaction.

    ``transaction_ids`` (one per transfer) groups transfers into business transactions; by
    default all of them form one. Balance rows are read ``FOR UPDATE`` (MySQL) and updated
    only if their chain head is still the one read, so two writers can never fork a chain.
    """
    if not transfers:
        return
    now = now or utcnow()
    if transaction_ids is None:
        single = ids.next_id(0)
        transaction_ids = [single] * len(transfers)
    by_promoter: dict[int, list[int]] = defaultdict(list)
    for index, transfer in enumerate(transfers):
        if transfer.promoter_id is not None:
            by_promoter[transfer.promoter_id].append(index)
    locked = await lock_accounts(tx, list(by_promoter), transfers[0].currency, now)

    rows: list[dict[str, object]] = []
    chain: dict[int, tuple[int, str | None, str | None]] = {}
    account_updates: dict[int, list[dict[str, object]]] = defaultdict(list)
    for promoter_id, indexes in by_promoter.items():
        account = dict(locked[promoter_id])
        head, length = str(account["chain_head"]), int(account["chain_length"])  # type: ignore[call-overload]
        for index in indexes:
            transfer = transfers[index]
            transfer_id = ids.next_id(shard_of(promoter_id))
            length += 1
            new_hash = chain_hash(
                head,
                transfer_id,
                length,
                transfer.key,
                transfer.debit,
                transfer.credit,
                transfer.amount,
                transfer.currency,
                transaction_ids[index],
            )
            chain[index] = (transfer_id, head, new_hash)
            for column, delta in transfer.deltas.items():
                account[column] = int(account[column]) + delta  # type: ignore[call-overload]
            rows.append(
                _row(transfer, transfer_id, transaction_ids[index], length, head, new_hash, now)
            )
            head = new_hash
        account.update(chain_head=head, chain_length=length, updated_at=now)
        account_updates[shard_of(promoter_id)].append(account)
    for index, transfer in enumerate(transfers):
        if transfer.promoter_id is None:
            rows.append(
                _row(transfer, ids.next_id(0), transaction_ids[index], None, None, None, now)
            )

    conn = await tx.main()
    by_table: dict[str, list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        by_table[tables.flows.for_id(int(row["id"])).name].append(row)  # type: ignore[call-overload]
    for rows_of_table in by_table.values():
        table = tables.flows.for_id(int(rows_of_table[0]["id"]))  # type: ignore[call-overload]
        await conn.execute(table.insert(), rows_of_table)

    # The rows are locked (FOR UPDATE on MySQL; SQLite has one writer), so their new
    # absolute values go back in one multi-row upsert per shard.
    for shard, new_rows in account_updates.items():
        await upsert_replace(
            await tx.shard(shard),
            accounts.for_shard(shard),
            new_rows,
            ["promoter_id"],
            [*(f"{b}_amount" for b in BUCKETS), "chain_head", "chain_length", "updated_at"],
        )


def _row(
    transfer: Transfer,
    transfer_id: int,
    transaction_id: int,
    chain_seq: int | None,
    prev_hash: str | None,
    new_hash: str | None,
    now: datetime,
) -> dict[str, object]:
    return {
        "id": transfer_id,
        "transaction_id": transaction_id,
        "idempotency_key": transfer.key,
        "kind": transfer.kind,
        "debit_account": transfer.debit,
        "credit_account": transfer.credit,
        "amount": transfer.amount,
        "currency": transfer.currency,
        "order_id": transfer.order_id,
        "record_id": transfer.record_id,
        "promoter_id": transfer.promoter_id,
        "chain_seq": chain_seq,
        "prev_hash": prev_hash,
        "hash": new_hash,
        "created_at": now,
    }


async def run_guarded(db: Database, work: Callable[[Tx], Awaitable[T]], attempts: int = 5) -> T:
    """``db.run(work)``, run again when a guarded update lost a race (:class:`StaleWrite`)."""
    for attempt in range(attempts):
        try:
            return await db.run(work)
        except StaleWrite:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


# -- verification --------------------------------------------------------------------------


@dataclass
class VerifyReport:
    ok: bool
    transfers_checked: int
    promoters_checked: int
    broken_chains: list[dict[str, object]]
    balance_mismatches: list[dict[str, object]]
    # Settlement batches whose transfer to a promoter differs from the records stamped with
    # the batch (the per-record audit of batched settlement, docs/decisions/0304).
    settlement_mismatches: list[dict[str, object]]
    ledger_total: int
    platform_balances: dict[str, int]
    checked_at: datetime


async def _flows(
    conn: AsyncConnection, tables: CommissionTables, promoter_ids: Collection[int] | None
) -> tuple[list[dict[str, object]], dict[str, int], int]:
    """Promoter transfers (for the chains), every account's balance (aggregated by the
    database) and how many transfers there are."""
    chained: list[dict[str, object]] = []
    balances: dict[str, int] = defaultdict(int)
    count = 0
    for month in await tables.flows.existing_months(conn):
        table = tables.flows.for_month(month)
        query = select(table).where(table.c.promoter_id.is_not(None))
        if promoter_ids is not None:
            query = query.where(table.c.promoter_id.in_(list(promoter_ids)))
        chained.extend(dict(row._mapping) for row in await conn.execute(query))
        for column, sign in ((table.c.credit_account, 1), (table.c.debit_account, -1)):
            rows = await conn.execute(
                select(column, func.sum(table.c.amount), func.count()).group_by(column)
            )
            for account, total, rows_counted in rows:
                balances[str(account)] += sign * int(total)
                if sign == 1:
                    count += int(rows_counted)
    return chained, balances, count


SETTLE_BATCH_PREFIX = "settle-batch:"


async def _settled_by_batch(
    conn: AsyncConnection, tables: CommissionTables, promoter_ids: Collection[int] | None
) -> dict[tuple[int, int], int]:
    """Sum of ``settled_amount`` per (settlement batch, promoter), from the records."""
    stamped: dict[tuple[int, int], int] = defaultdict(int)
    for month in await tables.records.existing_months(conn):
        table = tables.records.for_month(month)
        query = (
            select(
                table.c.settle_batch_id,
                table.c.beneficiary_id,
                func.sum(table.c.settled_amount),
            )
            .where(table.c.settle_batch_id.is_not(None), table.c.settled_amount > 0)
            .group_by(table.c.settle_batch_id, table.c.beneficiary_id)
        )
        if promoter_ids is not None:
            query = query.where(table.c.beneficiary_id.in_(list(promoter_ids)))
        for batch_id, promoter_id, amount in await conn.execute(query):
            stamped[(int(batch_id), int(promoter_id))] += int(amount)
    return stamped


def _settlement_mismatches(
    flows: list[dict[str, object]], stamped: dict[tuple[int, int], int]
) -> list[dict[str, object]]:
    """Each batch's settle transfer to a promoter must equal the sum of the amounts its
    records were settled with (``settled_amount`` of the records stamped with the batch);
    a batch's records with nothing to move have no transfer."""
    ledger: dict[tuple[int, int], int] = defaultdict(int)
    for flow in flows:
        key = str(flow["idempotency_key"])
        if flow["kind"] == "settle" and key.startswith(SETTLE_BATCH_PREFIX):
            batch_id = int(key.split(":")[1])
            ledger[(batch_id, int(flow["promoter_id"]))] += int(flow["amount"])  # type: ignore[call-overload]
    return [
        {
            "batch_id": str(batch_id),
            "promoter_id": str(promoter_id),
            "ledger_amount": ledger.get((batch_id, promoter_id), 0),
            "records_amount": stamped.get((batch_id, promoter_id), 0),
        }
        for batch_id, promoter_id in sorted(set(ledger) | set(stamped))
        if ledger.get((batch_id, promoter_id), 0) != stamped.get((batch_id, promoter_id), 0)
    ]


async def verify(
    db: Database, tables: CommissionTables, promoter_ids: Collection[int] | None = None
) -> VerifyReport:
    """Walk every promoter's chain (links, hashes, no gap, head = the balance row's),
    compare every balance row with the sum of its transfers and every settlement batch's
    transfers with its records; report what is broken.
    ``promoter_ids`` limits the chain and balance checks to those promoters."""
    async with db.read(may_lag=False) as conn:
        flows, balances, transfer_count = await _flows(conn, tables, promoter_ids)
        # Same read transaction as the flows: one snapshot on SQLite.
        stamped = await _settled_by_batch(conn, tables, promoter_ids)
    account_rows: dict[int, dict[str, object]] = {}
    for shards in db.shards_by_url().values():
        async with db.read_shard(shards[0], may_lag=False) as conn:
            for shard in shards:
                if promoter_ids is not None and not any(shard_of(p) == shard for p in promoter_ids):
                    continue
                table = accounts.for_shard(shard)
                query = select(table)
                if promoter_ids is not None:
                    query = query.where(table.c.promoter_id.in_(list(promoter_ids)))
                for row in await conn.execute(query):
                    account_rows[int(row._mapping["promoter_id"])] = dict(row._mapping)

    chains: dict[int, list[dict[str, object]]] = defaultdict(list)
    for flow in flows:
        chains[int(flow["promoter_id"])].append(flow)  # type: ignore[call-overload]

    broken: list[dict[str, object]] = []
    for promoter_id in sorted(set(chains) | set(account_rows)):
        entries = sorted(chains.get(promoter_id, []), key=lambda f: int(f["chain_seq"]))  # type: ignore[call-overload]
        head = ""
        for expected_seq, flow in enumerate(entries, start=1):
            seq = int(flow["chain_seq"])  # type: ignore[call-overload]
            problem = None
            if seq != expected_seq:
                problem = f"missing transfer before chain position {seq}"
            elif flow["prev_hash"] != head:
                problem = "previous hash does not match"
            elif flow["hash"] != chain_hash(
                head,
                int(flow["id"]),  # type: ignore[call-overload]
                seq,
                str(flow["idempotency_key"]),
                str(flow["debit_account"]),
                str(flow["credit_account"]),
                int(flow["amount"]),  # type: ignore[call-overload]
                str(flow["currency"]),
                int(flow["transaction_id"]),  # type: ignore[call-overload]
            ):
                problem = "transfer was altered (hash mismatch)"
            if problem:
                broken.append(
                    {
                        "promoter_id": str(promoter_id),
                        "transfer_id": str(flow["id"]),
                        "reason": problem,
                    }
                )
                break
            head = str(flow["hash"])
        else:
            account = account_rows.get(promoter_id)
            if account is not None and (
                account["chain_head"] != head or int(account["chain_length"]) != len(entries)  # type: ignore[call-overload]
            ):
                broken.append(
                    {
                        "promoter_id": str(promoter_id),
                        "transfer_id": None,
                        "reason": "chain head or length differs from the balance row",
                    }
                )

    mismatches: list[dict[str, object]] = []
    for promoter_id, account in sorted(account_rows.items()):
        for bucket in BUCKETS:
            stored = int(account[f"{bucket}_amount"])  # type: ignore[call-overload]
            derived = balances.get(promoter_account(promoter_id, bucket), 0)
            if stored != derived:
                mismatches.append(
                    {
                        "promoter_id": str(promoter_id),
                        "account": bucket,
                        "balance_amount": stored,
                        "entries_amount": derived,
                    }
                )
    for account_name, amount in balances.items():
        parsed = parse_promoter_account(account_name)
        if parsed is None or parsed[0] in account_rows or amount == 0:
            continue
        if promoter_ids is None or parsed[0] in promoter_ids:
            mismatches.append(
                {
                    "promoter_id": str(parsed[0]),
                    "account": parsed[1],
                    "balance_amount": 0,
                    "entries_amount": amount,
                }
            )
    settlements = _settlement_mismatches(flows, stamped)
    platform = {k: v for k, v in sorted(balances.items()) if parse_promoter_account(k) is None}
    total = sum(balances.values())
    return VerifyReport(
        ok=not broken and not mismatches and not settlements and total == 0,
        transfers_checked=transfer_count,
        promoters_checked=len(set(chains) | set(account_rows)),
        broken_chains=broken,
        balance_mismatches=mismatches,
        settlement_mismatches=settlements,
        ledger_total=total,
        platform_balances=platform,
        checked_at=datetime.now(UTC),
    )
