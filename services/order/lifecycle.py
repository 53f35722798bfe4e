"""The order lifecycle: created → paid → completed | closed (ARCHITECTURE §5).

Each move is one guarded update (``WHERE status = <the state it leaves>``), so two requests
never both win. Repeating a move that already happened is a 2xx replay; a move from a state
that does not allow it is a 409 with a code that says why.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from libs.common.db.engine import Database, Tx
from libs.common.errors import Conflict
from libs.common.ids import SHARD_COUNT, shard_of
from libs.common.messaging.outbox import utcnow
from services.order import publishing
from services.order.models import CLOSED, COMPLETED, CREATED, PAID, orders
from services.order.records import Order, load_in_tx


def _refuse(order: Order, action: str, code: str, why: str) -> Conflict:
    return Conflict(
        f"cannot {action} order {order.id}: {why}",
        code=code,
        details={"order_id": str(order.id), "status": order.status},
    )


async def _move(tx: Tx, order_id: int, leaving: str, values: dict[str, object]) -> bool:
    table = orders.for_id(order_id)
    result = await (await tx.shard(shard_of(order_id))).execute(
        update(table).where(table.c.id == order_id, table.c.status == leaving).values(**values)
    )
    return bool(result.rowcount)


def _at(at: datetime | None) -> datetime:
    """A platform's moment as naive UTC; none or one in the future means now."""
    now = utcnow()
    if at is None:
        return now
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return min(at, now)


async def pay(tx: Tx, order_id: int, at: datetime | None = None) -> Order:
    """created → paid. Paying a paid (or completed) order again is a replay; a closed one is
    409 ``order.closed``."""
    if await _move(tx, order_id, CREATED, {"status": PAID, "paid_at": _at(at)}):
        # Read after the guarded update: the attribution may have resolved meanwhile.
        order = await load_in_tx(tx, order_id)
        await publishing.order_paid(tx, order)
        return order
    order = await load_in_tx(tx, order_id)
    if order.status in (PAID, COMPLETED):
        return order
    raise _refuse(order, "pay", "order.closed", "it was closed unpaid")


async def complete(
    tx: Tx, order_id: int, at: datetime | None = None, *, automatic: bool = False
) -> Order:
    """paid → completed (received). Again on a completed order is a replay; an unpaid order
    is 409 ``order.not_paid``; a closed one 409 ``order.closed``."""
    order, _ = await _complete(tx, order_id, at, automatic=automatic)
    return order


async def _complete(
    tx: Tx, order_id: int, at: datetime | None, *, automatic: bool
) -> tuple[Order, bool]:
    values = {"status": COMPLETED, "completed_at": _at(at), "auto_completed": automatic}
    if await _move(tx, order_id, PAID, values):
        order = await load_in_tx(tx, order_id)
        await publishing.order_completed(tx, order, automatic=automatic)
        return order, True
    order = await load_in_tx(tx, order_id)
    if order.status == COMPLETED:
        return order, False
    if order.status == CREATED:
        raise _refuse(order, "complete", "order.not_paid", "it is not paid")
    raise _refuse(order, "complete", "order.closed", "it was closed unpaid")


async def close(tx: Tx, order_id: int, at: datetime | None = None) -> Order:
    """created → closed (unpaid orders only). Again on a closed order is a replay; a paid or
    completed order is 409 ``order.already_paid`` (refund it instead)."""
    moment = _at(at)
    if await _move(tx, order_id, CREATED, {"status": CLOSED, "closed_at": moment}):
        order = await load_in_tx(tx, order_id)
        await publishing.order_closed(tx, order, moment)
        return order
    order = await load_in_tx(tx, order_id)
    if order.status == CLOSED:
        return order
    raise _refuse(order, "close", "order.already_paid", "it is paid; refund it instead")


async def complete_due_orders(
    db: Database, auto_complete_days: int, now: datetime | None = None, batch: int = 200
) -> int:
    """Complete every paid order paid at least ``auto_complete_days`` ago, as shops
    auto-confirm receipt; returns how many. Safe to run in several processes at once: each
    completion is a guarded update."""
    now = now or utcnow()
    cutoff = now - timedelta(days=auto_complete_days)
    completed = 0
    for shard in range(SHARD_COUNT):
        table = orders.for_shard(shard)
        while True:
            async with db.read_shard(shard, may_lag=False) as conn:
                due = [
                    row[0]
                    for row in await conn.execute(
                        select(table.c.id)
                        .where(table.c.status == PAID, table.c.paid_at <= cutoff)
                        .order_by(table.c.paid_at)
                        .limit(batch)
                    )
                ]
            if not due:
                break
            for order_id in due:

                async def work(tx: Tx, order_id: int = order_id) -> bool:
                    _, moved = await _complete(tx, order_id, now, automatic=True)
                    return moved

                if await db.run(work):
                    completed += 1
            if len(due) < batch:
                break
    return completed
