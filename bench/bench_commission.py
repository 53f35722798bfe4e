"""Commission accrual and settlement throughput, side by side in one run.

order.paid (1 item, a 3-level chain) → commissions committed, through the real broker:
- micro-batched: the service's consumer (a batch of up to 500 events in one transaction,
  bulk inserts, one balance-row update per promoter);
- one transaction per order: the same code with a consumer batch of 1;
- the seed's way: ancestors by a recursive CTE per order, then a row-by-row INSERT and
  UPDATE per line, one transaction per order;
- the limit: a bare multi-row INSERT of the same record and ledger rows (no broker, no logic).
Then settlement of due frozen records (commissions/s), 500 and 2,000 orders per transaction:
batched (one guarded UPDATE, one transfer per promoter per batch) against the per-record
baseline (one transfer per record, the way before docs/decisions/0304).

SQLite always; MariaDB/MySQL too when TUIKE_BENCH_MYSQL_URL (or TUIKE_TEST_MYSQL_URL) is set.
Sizes: TUIKE_BENCH_ORDERS (default 3000) for the batched paths, a sixth of it for the
one-by-one paths. TUIKE_BENCH_COMMISSION_PARTS=settlement (or accrual) runs only that half.
Figures only: nothing passes or fails on time.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Column, Integer, MetaData, Table, func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from deploy.local.stack import free_port, tansu_binary, wait_port
from libs.common.business_settings import SettingsStore
from libs.common.db.engine import Database, Tx
from libs.common.db.migrations import migrate
from libs.common.events import Beneficiary, OrderCompleted, OrderData, OrderItemData
from libs.common.ids import IdGenerator
from libs.common.messaging.consumer import EventConsumer, Subscription
from libs.common.messaging.envelope import Envelope, make_event
from libs.common.messaging.kafka import ensure_topics, make_producer
from libs.common.messaging.outbox import utcnow
from libs.common.settings import ServiceSettings
from services.commission.accrual import accrue_paid_orders
from services.commission.compliance import CommissionSettings, LevelTerms
from services.commission.consumers import order_handler
from services.commission.context import CommissionContext
from services.commission.ledger import run_guarded
from services.commission.migrations import MIGRATIONS, ensure_monthly_tables
from services.commission.models import commission_orders, tables_for
from services.commission.rules import create_rule
from services.commission.settlement import (
    SettleResult,
    complete_orders,
    settle_due_now,
    settle_due_now_per_record,
)

ZONE = "Asia/Shanghai"
RATES = (1000, 500, 200)  # 3 levels under the `global` profile

seed_meta = MetaData()
seed_relation = Table(
    "seed_relation",
    seed_meta,
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("parent_id", BigInteger, nullable=True),
)
seed_commission = Table(
    "seed_commission",
    seed_meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("order_id", BigInteger, nullable=False),
    Column("level", Integer, nullable=False),
    Column("user_id", BigInteger, nullable=False),
    Column("amount", BigInteger, nullable=False),
)
seed_balance = Table(
    "seed_balance",
    seed_meta,
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("frozen_amount", BigInteger, nullable=False),
)


class Chains:
    """200 chains of 3 promoters, each with buyers under it."""

    def __init__(self, ids: IdGenerator, count: int = 200) -> None:
        self.chains = [[ids.next_id() for _ in range(3)] for _ in range(count)]
        self.buyers = [(ids.next_id(), chain) for chain in self.chains]

    def order(self, ids: IdGenerator, index: int) -> OrderData:
        buyer, chain = self.buyers[index % len(self.buyers)]
        order_id = ids.next_id_for(buyer)
        now = datetime.now(UTC)
        paid = 5_000 + (index % 97) * 101
        return OrderData(
            order_id=order_id,
            platform="bench",
            order_no=f"B{order_id}",
            buyer_user_id=buyer,
            currency="CNY",
            promoter_id=chain[0],
            beneficiaries=[Beneficiary(level=i + 1, user_id=u) for i, u in enumerate(chain)],
            attribution_status="resolved",
            items=[
                OrderItemData(
                    item_id=ids.next_id_for(buyer),
                    sku="sku",
                    category="general",
                    quantity=1,
                    unit_price_amount=paid,
                    paid_amount=paid,
                )
            ],
            shipping_amount=0,
            status="paid",
            created_at=now,
            paid_at=now,
        )


async def _fresh_database(mysql_url: str | None, workdir: Path) -> tuple[Database, str | None]:
    if mysql_url is None:
        path = workdir / f"bench-{secrets.token_hex(3)}.db"
        return Database(f"sqlite+aiosqlite:///{path}"), None
    name = f"tuike_bench_{secrets.token_hex(3)}"
    engine = create_async_engine(mysql_url.rstrip("/") + "/")
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    await engine.dispose()
    return Database(f"{mysql_url.rstrip('/')}/{name}?charset=utf8mb4"), name


async def _drop(mysql_url: str | None, name: str | None) -> None:
    if mysql_url is None or name is None:
        return
    engine = create_async_engine(mysql_url.rstrip("/") + "/")
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    await engine.dispose()


async def _prepare(db: Database, ids: IdGenerator, chains: Chains) -> CommissionContext:
    await migrate(db, MIGRATIONS)
    ctx = CommissionContext(ids, tables_for(ZONE))
    await ensure_monthly_tables(db, ctx.tables, datetime.now(UTC), 0)
    store = SettingsStore(CommissionSettings, db)

    async def configure(tx: Tx) -> None:
        await store.update(tx, {"compliance_profile": "global", "frozen_days": 0})
        await create_rule(
            tx,
            ids,
            "default",
            None,
            [LevelTerms(level=i + 1, rate_bps=r) for i, r in enumerate(RATES)],
        )

    await db.run(configure)
    async with db.primary.begin() as conn:
        await conn.run_sync(lambda sync: seed_meta.create_all(sync))
        relations: list[dict[str, int | None]] = []
        for buyer, chain in chains.buyers:
            relations.append({"user_id": buyer, "parent_id": chain[0]})
            relations.append({"user_id": chain[0], "parent_id": chain[1]})
            relations.append({"user_id": chain[1], "parent_id": chain[2]})
            relations.append({"user_id": chain[2], "parent_id": None})
        await conn.execute(seed_relation.insert(), relations)
        await conn.execute(
            seed_balance.insert(),
            [{"user_id": u, "frozen_amount": 0} for chain in chains.chains for u in chain],
        )
    return ctx


_ANCESTORS = text(
    """
    WITH RECURSIVE up(user_id, parent_id, depth) AS (
        SELECT user_id, parent_id, 0 FROM seed_relation WHERE user_id = :buyer
        UNION ALL
        SELECT r.user_id, r.parent_id, up.depth + 1
        FROM seed_relation r JOIN up ON r.user_id = up.parent_id
        WHERE up.depth < 3
    )
    SELECT user_id, depth FROM up WHERE depth BETWEEN 1 AND 3 ORDER BY depth
    """
)


def seed_handler() -> Callable[[Tx, Sequence[Envelope]], Awaitable[None]]:
    async def handle(tx: Tx, events: Sequence[Envelope]) -> None:
        conn = await tx.main()
        for event in events:
            order = OrderData.model_validate(event.data)
            ancestors = (await conn.execute(_ANCESTORS, {"buyer": order.buyer_user_id})).all()
            for item in order.items:
                for user_id, depth in ancestors:
                    amount = item.paid_amount * RATES[depth - 1] // 10_000
                    await conn.execute(
                        seed_commission.insert().values(
                            order_id=order.order_id, level=depth, user_id=user_id, amount=amount
                        )
                    )
                    await conn.execute(
                        seed_balance.update()
                        .where(seed_balance.c.user_id == user_id)
                        .values(frozen_amount=seed_balance.c.frozen_amount + amount)
                    )
            await conn.execute(
                commission_orders.insert().values(
                    order_id=order.order_id, currency="CNY", accrued_at=utcnow()
                )
            )

    return handle


async def _through_broker(
    db: Database,
    broker: str,
    handler: Callable[[Tx, Sequence[Envelope]], Awaitable[None]],
    orders: list[OrderData],
    batch_size: int,
) -> float:
    """Orders/s from the first publish to the last order committed."""
    topic = f"bench.orders.{secrets.token_hex(4)}"
    settings = ServiceSettings(
        service_name=f"bench{secrets.token_hex(2)}",
        kafka_bootstrap_servers=broker,
        consumer_batch_size=batch_size,
        kafka_topic_partitions=1,
    )
    await ensure_topics(settings, [topic])
    producer = make_producer(settings)
    await producer.start()
    consumer = EventConsumer(
        Subscription("bench", [topic], handler, frozenset({"order.paid"})),
        db,
        producer,
        settings,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))

    async def committed() -> int:
        async with db.read(may_lag=False) as conn:
            return int(await conn.scalar(select(func.count()).select_from(commission_orders)) or 0)

    async def publish(batch: list[OrderData]) -> None:
        futures = [
            await producer.send(
                topic,
                make_event(
                    "order.paid",
                    o.order_id,
                    key=o.order_id,
                    data=o.model_dump(mode="json"),
                    source="b",
                ).to_bytes(),
                key=str(o.order_id).encode(),
            )
            for o in batch
        ]
        await asyncio.gather(*futures)

    try:
        warmup, measured = orders[:1], orders[1:]
        await publish(warmup)
        await _wait_for(committed, 1)
        started = time.perf_counter()
        await publish(measured)
        await _wait_for(committed, len(orders))
        return len(measured) / (time.perf_counter() - started)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await producer.stop()


async def _wait_for(count: Callable[[], Awaitable[int]], target: int) -> None:
    """Poll until ``count()`` reaches ``target`` (the consumer runs in this loop too)."""
    while True:
        if await count() >= target:
            return
        await asyncio.sleep(0.01)


async def _bare_insert(db: Database, ctx: CommissionContext, orders: list[OrderData]) -> float:
    """The same record and ledger rows, prepared in advance, multi-row INSERTs of 500 orders."""
    now = utcnow()
    batches = []
    for start in range(0, len(orders), 500):
        records: list[dict[str, Any]] = []
        flows: list[dict[str, Any]] = []
        for order in orders[start : start + 500]:
            for item in order.items:
                for beneficiary, rate in zip(order.beneficiaries, RATES, strict=True):
                    record_id = ctx.ids.next_id_for(beneficiary.user_id)
                    amount = item.paid_amount * rate // 10_000
                    records.append(
                        {
                            "id": record_id,
                            "order_id": order.order_id,
                            "item_id": item.item_id,
                            "sku": item.sku,
                            "category": item.category,
                            "level": beneficiary.level,
                            "beneficiary_id": beneficiary.user_id,
                            "buyer_user_id": order.buyer_user_id,
                            "currency": "CNY",
                            "quantity": 1,
                            "item_paid_amount": item.paid_amount,
                            "base_amount": item.paid_amount,
                            "rate_bps": rate,
                            "accrued_amount": amount,
                            "reversed_amount": 0,
                            "amount": amount,
                            "status": "frozen",
                            "clamped": False,
                            "paid_at": now,
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
                    flows.append(
                        {
                            "id": ctx.ids.next_id_for(beneficiary.user_id),
                            "transaction_id": order.order_id,
                            "idempotency_key": f"bare:{record_id}",
                            "kind": "accrue",
                            "debit_account": "platform:expense",
                            "credit_account": f"promoter:{beneficiary.user_id}:frozen",
                            "amount": max(amount, 1),
                            "currency": "CNY",
                            "created_at": now,
                        }
                    )
        batches.append((records, flows))
    record_table = ctx.tables.records.for_time(datetime.now(UTC))
    flow_table = ctx.tables.flows.for_time(datetime.now(UTC))
    started = time.perf_counter()
    for records, flows in batches:

        async def work(
            tx: Tx, records: list[dict[str, Any]] = records, flows: list[dict[str, Any]] = flows
        ) -> None:
            conn = await tx.main()
            await conn.execute(record_table.insert(), records)
            await conn.execute(flow_table.insert(), flows)

        await db.run(work)
    return len(orders) / (time.perf_counter() - started)


Settle = Callable[[Tx, CommissionContext, datetime, int], Awaitable[SettleResult]]


async def _settlement(
    db: Database, ctx: CommissionContext, orders: list[OrderData], settle: Settle, batch: int
) -> float:
    """Commissions/s moving frozen → settled, ``batch`` orders per transaction."""
    for start in range(0, len(orders), 500):
        part = orders[start : start + 500]

        async def accrue(tx: Tx, part: list[OrderData] = part) -> None:
            await accrue_paid_orders(tx, ctx, part)
            done = [
                OrderCompleted(order_id=o.order_id, completed_at=datetime.now(UTC)) for o in part
            ]
            await complete_orders(tx, ctx, done)

        await run_guarded(db, accrue)
    settled = 0
    started = time.perf_counter()
    while True:
        result = await run_guarded(db, lambda tx: settle(tx, ctx, utcnow(), batch))
        settled += result.records
        if result.orders == 0:
            break
    return settled / (time.perf_counter() - started)


async def _run_backend(
    label: str, mysql_url: str | None, broker: str, workdir: Path, size: int, parts: set[str]
) -> None:
    ids = IdGenerator(900 + secrets.randbelow(100))
    chains = Chains(ids)
    figures: dict[str, float] = {}

    async def measure(
        name: str, run: Callable[[Database, CommissionContext], Awaitable[float]]
    ) -> None:
        db, name_of_db = await _fresh_database(mysql_url, workdir)
        try:
            ctx = await _prepare(db, ids, chains)
            figures[name] = await run(db, ctx)
        finally:
            await db.dispose()
            await _drop(mysql_url, name_of_db)

    def settling(
        settle: Settle, batch: int
    ) -> Callable[[Database, CommissionContext], Awaitable[float]]:
        async def run(db: Database, ctx: CommissionContext) -> float:
            orders = [chains.order(ids, i) for i in range(size)]
            return await _settlement(db, ctx, orders, settle, batch)

        return run

    one_by_one = max(size // 6, 50)
    if "accrual" in parts:
        await _accrual(measure, figures, chains, ids, broker, size, one_by_one)

    # Settlement: the batched way (one transfer per promoter per batch) against the way
    # before batches (one transfer per record), 500 and 2,000 orders per batch; the orders
    # are made after the rule (an order uses the rules in force when it was paid).
    # Each the better of two runs, the two ways alternating (the machine is shared).
    for batch in (500, 2_000) if "settlement" in parts else ():
        best: dict[str, float] = {}
        for _ in range(2):
            for way, settle in (
                ("batched", settle_due_now),
                ("per-record baseline", settle_due_now_per_record),
            ):
                name = f"settlement {way} ({batch} orders/tx)"
                await measure(name, settling(settle, batch))
                best[name] = max(best.get(name, 0.0), figures[name])
        figures.update(best)

    limit = figures.get("limit: bare multi-row INSERT")
    print(f"\n{label}: {size} orders batched, {one_by_one} one by one; 1 item x 3 levels each")
    for name, value in figures.items():
        if name.startswith("settlement"):
            unit, note = "commissions/s", ""
            baseline = figures.get(name.replace("batched", "per-record baseline"))
            if "batched" in name and baseline:
                note = f"  ({value / baseline:.1f}x the per-record baseline)"
        else:
            unit = "orders/s"
            note = f"  ({value / limit:.0%} of the bare-insert limit)" if limit else ""
        print(f"  {name:45s} {value:10.0f} {unit}{note}")


Measure = Callable[
    [str, Callable[[Database, CommissionContext], Awaitable[float]]], Awaitable[None]
]


async def _accrual(
    measure: Measure,
    figures: dict[str, float],
    chains: Chains,
    ids: IdGenerator,
    broker: str,
    size: int,
    one_by_one: int,
) -> None:
    batched_orders = [chains.order(ids, i) for i in range(size)]
    single_orders = [chains.order(ids, i) for i in range(one_by_one)]
    seed_orders = [chains.order(ids, i) for i in range(one_by_one)]

    def context_of(ctx: CommissionContext) -> Callable[[], CommissionContext]:
        return lambda: ctx

    # The machine is shared: the batched paths and the limit take the better of two runs.
    batched = "micro-batched (service consumer, 500/tx)"
    best = 0.0
    for _ in range(2):
        await measure(
            batched,
            lambda db, ctx: _through_broker(
                db, broker, order_handler(context_of(ctx)), batched_orders, 500
            ),
        )
        best = max(best, figures[batched])
    figures[batched] = best
    await measure(
        "one transaction per order",
        lambda db, ctx: _through_broker(
            db, broker, order_handler(context_of(ctx)), single_orders, 1
        ),
    )
    await measure(
        "seed's way (recursive CTE + row-by-row)",
        lambda db, ctx: _through_broker(db, broker, seed_handler(), seed_orders, 1),
    )
    await measure(
        "limit: bare multi-row INSERT", lambda db, ctx: _bare_insert(db, ctx, batched_orders)
    )


async def _main(broker: str) -> None:
    size = int(os.environ.get("TUIKE_BENCH_ORDERS", "3000"))
    mysql_url = os.environ.get("TUIKE_BENCH_MYSQL_URL") or os.environ.get("TUIKE_TEST_MYSQL_URL")
    parts = set(os.environ.get("TUIKE_BENCH_COMMISSION_PARTS", "accrual,settlement").split(","))
    with tempfile.TemporaryDirectory() as workdir:
        await _run_backend("SQLite", None, broker, Path(workdir), size, parts)
        if mysql_url:
            await _run_backend("MariaDB", mysql_url, broker, Path(workdir), size, parts)


def main() -> None:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = subprocess.Popen(
        [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port("127.0.0.1", port, 20, broker)
        asyncio.run(_main(f"127.0.0.1:{port}"))
    finally:
        broker.terminate()
        broker.wait(10)


if __name__ == "__main__":
    main()
