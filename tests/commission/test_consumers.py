"""The commission service in-process with its workers, fed through the real broker: order
events accrue, refund, complete; the scheduler (one leader) hands due orders to
commission_settle and its consumer settles them; if producing fails it settles itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import select

from libs.common.db.engine import Database
from libs.common.db.migrations import migrate
from libs.common.events import OrderCompleted, PromoterStatusChanged
from libs.common.messaging.envelope import COMMISSION_EVENTS, ORDER_EVENTS, USER_EVENTS, make_event
from libs.common.messaging.kafka import make_producer
from libs.common.messaging.outbox import outbox
from libs.common.runtime import Runtime
from services.commission.app import SPEC
from services.commission.context import CommissionContext, CommissionServiceSettings
from services.commission.ledger import verify
from services.commission.migrations import MIGRATIONS
from services.commission.models import promoter_status, tables_for
from services.commission.scheduler import SettlementScheduler
from tests.commission.helpers import Commission, fresh_id, item, paid_order, refund


@pytest.fixture
async def runtime(
    database_url: str, db: Database, broker: str, redis_url: str, key_prefix: str
) -> AsyncIterator[Runtime]:
    await migrate(db, MIGRATIONS)
    settings = CommissionServiceSettings(
        service_name="commission",
        database_url=database_url,
        redis_url=redis_url,
        redis_key_prefix=key_prefix,
        kafka_bootstrap_servers=broker,
        node_id=31,
        settle_interval_seconds=0.2,
    )
    running = Runtime(SPEC, settings)
    await SPEC.on_start(running) if SPEC.on_start else None
    await running.start(serve_workers=True)
    try:
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def producer(broker: str) -> AsyncIterator[AIOKafkaProducer]:
    sender = make_producer(CommissionServiceSettings(kafka_bootstrap_servers=broker))
    await sender.start()
    try:
        yield sender
    finally:
        await sender.stop()


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def test_events_through_the_broker_accrue_refund_and_settle(
    runtime: Runtime, producer: AIOKafkaProducer, db: Database
) -> None:
    service = Commission(db, CommissionContext(runtime.id_generator, tables_for("Asia/Shanghai")))
    await service.settings(frozen_days=0)
    await service.rule("default", [{"level": 1, "rate_bps": 1000}, {"level": 2, "rate_bps": 500}])
    parent, grandparent, disabled = fresh_id(), fresh_id(), fresh_id()
    status = PromoterStatusChanged(
        user_id=disabled, status="disabled", changed_at=datetime.now(UTC)
    ).model_dump(mode="json")
    await producer.send_and_wait(
        USER_EVENTS,
        make_event(
            "promoter.disabled", disabled, key=disabled, data=status, source="user"
        ).to_bytes(),
        key=str(disabled).encode(),
    )
    sold = item(10_000)
    order = paid_order([parent, grandparent], [sold])
    other = paid_order([disabled, grandparent], [item(20_000)])

    async def send(event_type: str, order_id: int, data: dict[str, object], fact: object) -> None:
        event = make_event(event_type, fact, key=order_id, data=data, source="order")
        await producer.send_and_wait(ORDER_EVENTS, event.to_bytes(), key=str(order_id).encode())

    for _ in range(2):  # at least once: the duplicate is absorbed
        await send("order.paid", order.order_id, order.model_dump(mode="json"), order.order_id)

    async def status_known() -> bool:
        async with db.read(may_lag=False) as conn:
            return bool(
                await conn.scalar(
                    select(promoter_status.c.status).where(promoter_status.c.user_id == disabled)
                )
            )

    await eventually(status_known)  # applied before the other order's payment
    await send("order.paid", other.order_id, other.model_dump(mode="json"), other.order_id)

    async def both_accrued() -> bool:
        return len(await service.records(order)) == 2 and len(await service.records(other)) == 2

    await eventually(both_accrued)
    assert [(r["beneficiary_id"], r["status"]) for r in await service.records(other)] == [
        (disabled, "void"),
        (grandparent, "frozen"),
    ]
    back = refund(order, fresh_id(), {sold.item_id: 4_000})
    await send("order.refunded", order.order_id, back.model_dump(mode="json"), back.refund_id)
    done = OrderCompleted(order_id=order.order_id, completed_at=datetime.now(UTC))
    await send("order.completed", order.order_id, done.model_dump(mode="json"), order.order_id)

    async def settled() -> bool:
        return [r["status"] for r in await service.records(order)] == ["settled", "settled"]

    await eventually(settled)
    assert await service.amounts(order) == {(sold.item_id, 1): 400, (sold.item_id, 2): 200}
    balances = await service.balances(parent)
    assert (balances["frozen_amount"], balances["available_amount"]) == (0, 400)
    assert (await service.balances(grandparent))["frozen_amount"] == 1_000  # the other order
    report = await verify(db, service.ctx.tables)
    assert report.ok, report
    # commission.events: accrued (2 orders), reversed (1 refund), settled (1 order).
    async with db.read(may_lag=False) as conn:
        published = [
            r[0]
            for r in await conn.execute(
                select(outbox.c.event_id).where(outbox.c.topic == COMMISSION_EVENTS)
            )
        ]
    assert sorted(e.split(":")[0] for e in published) == [
        "commission.accrued",
        "commission.accrued",
        "commission.reversed",
        "commission.settled",
    ]


async def test_one_leader_and_synchronous_fallback(runtime: Runtime, db: Database) -> None:
    service = Commission(db, CommissionContext(runtime.id_generator, tables_for("Asia/Shanghai")))
    # The service's own scheduler task and two more candidates: never two leaders at once.
    first, second = SettlementScheduler(runtime), SettlementScheduler(runtime)
    leaders = [await first.election.step(), await second.election.step()]
    assert sum(leaders) <= 1
    assert await runtime.redis.get(first.election.lock.name) is not None
    for candidate in (first, second):
        if candidate.election.is_leader:
            await candidate.election.lock.release()

    await service.settings(frozen_days=0)
    await service.rule("default", [{"level": 1, "rate_bps": 1000}])
    parent = fresh_id()
    orders = [paid_order([parent], [item(10_000)]) for _ in range(3)]
    await service.pay(*orders)
    for order in orders:
        await service.complete(order, datetime.now(UTC))
    # The broker cannot be reached: the scheduler settles the due orders itself.
    await runtime.producer.stop()
    result = await first.tick()
    assert (result.enqueued, result.settled_synchronously) in ((0, 3), (0, 0))
    balances = await service.balances(parent)
    assert (balances["frozen_amount"], balances["available_amount"]) == (0, 3_000)
    runtime.producer = make_producer(runtime.settings)
    await runtime.producer.start()


async def test_ready_once_every_consumer_has_joined_its_group(runtime: Runtime) -> None:
    """A process with consumers is ready once each has joined its group: a new group reads
    nothing for its first seconds, and an order paid then would show no commission yet."""
    assert runtime.consumers
    first = (await runtime.readiness())["consumers"]
    assert first == "ok" or first.startswith("down: RuntimeError: not yet in their groups")

    async def ready() -> bool:
        checks = await runtime.readiness()
        return checks == {"database": "ok", "redis": "ok", "broker": "ok", "consumers": "ok"}

    await eventually(ready)
    assert all(consumer.joined for consumer in runtime.consumers)
    # One consumer not in its group yet keeps the process not ready, and is named.
    runtime.consumers[0].joined = False
    checks = await runtime.readiness()
    assert checks["consumers"].startswith("down: RuntimeError: not yet in their groups")
    assert runtime.consumers[0].name in checks["consumers"]
