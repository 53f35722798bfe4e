"""Refunds: whole order, per item, partial and order-level amounts spread by largest
remainder; several per order, never above what was paid; idempotent on refund_no."""

from __future__ import annotations

import asyncio
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.common.errors import BadRequest, Conflict
from services.order.attribution import record_snapshot
from services.order.records import Item, Order
from services.order.refunds import split_refund
from services.order.schemas import OrderIn, RefundIn
from services.order.service import OrderService
from services.order.user_client import Attribution
from tests.order.conftest import order_body, order_events

CHAIN = Attribution(promoter_id=99, beneficiaries=[{"level": 1, "user_id": 99}])


async def _paid_order(orders: OrderService, **overrides: object) -> int:
    order, _ = await orders.create_order(OrderIn.model_validate(order_body(**overrides)))
    await orders.db.run(lambda tx: record_snapshot(tx, order.id, CHAIN))
    await orders.pay(order.id)
    return order.id


def _refund(**fields: object) -> RefundIn:
    return RefundIn.model_validate(fields)


async def test_order_level_amount_is_spread_by_what_each_item_still_has_paid(
    orders: OrderService,
) -> None:
    order_id = await _paid_order(orders)  # items A 9000, B 3001
    record, order, created = await orders.refund(order_id, _refund(refund_no="R1", amount=1000))
    assert created and record["amount"] == 1000
    # 1000 × 9000/12001 = 749.9 → 749 (+1 by largest remainder); 1000 × 3001/12001 = 250.06.
    assert [
        (i["sku"], i["refunded_amount"], i["remaining_paid_amount"]) for i in record["items"]
    ] == [
        ("A", 750, 8250),
        ("B", 250, 2751),
    ]
    assert order.refunded_amount == 1000
    assert [i.refunded_amount for i in order.items] == [750, 250]
    event = (await order_events(orders, order_id))[-1]
    assert event["type"] == "order.refunded"
    assert event["id"] == f"order.refunded:{record['id']}"
    assert event["data"]["refund_no"] == "R1"
    assert [(i["refunded_amount"], i["remaining_paid_amount"]) for i in event["data"]["items"]] == [
        (750, 8250),
        (250, 2751),
    ]


async def test_per_item_partial_then_whole_item_then_everything_left(
    orders: OrderService,
) -> None:
    order_id = await _paid_order(orders)
    first, _, _ = await orders.refund(
        order_id, _refund(refund_no="R1", items=[{"sku": "A", "amount": 4000}])
    )
    assert [(i["sku"], i["refunded_amount"]) for i in first["items"]] == [("A", 4000)]
    second, _, _ = await orders.refund(order_id, _refund(refund_no="R2", items=[{"sku": "B"}]))
    assert [
        (i["sku"], i["refunded_amount"], i["remaining_paid_amount"]) for i in second["items"]
    ] == [("B", 3001, 0)]
    rest, order, _ = await orders.refund(order_id, _refund(refund_no="R3"))
    assert [
        (i["sku"], i["refunded_amount"], i["remaining_paid_amount"]) for i in rest["items"]
    ] == [("A", 5000, 0)]
    assert order.refunded_amount == order.paid_amount == 12001
    with pytest.raises(Conflict) as nothing_left:
        await orders.refund(order_id, _refund(refund_no="R4"))
    assert nothing_left.value.code == "refund.nothing_to_refund"
    assert (
        len([e for e in await order_events(orders, order_id) if e["type"] == "order.refunded"]) == 3
    )


async def test_refunds_never_exceed_what_was_paid(orders: OrderService) -> None:
    order_id = await _paid_order(orders)
    await orders.refund(order_id, _refund(refund_no="R1", amount=12000))
    with pytest.raises(Conflict) as too_much:
        await orders.refund(order_id, _refund(refund_no="R2", amount=2))
    assert too_much.value.code == "refund.exceeds_paid"
    assert too_much.value.details["refundable_amount"] == 1
    with pytest.raises(Conflict) as item_too_much:
        await orders.refund(order_id, _refund(refund_no="R3", items=[{"sku": "B", "amount": 3001}]))
    assert item_too_much.value.code == "refund.exceeds_paid"
    assert (await orders.get(order_id)).refunded_amount == 12000


async def test_refund_no_is_idempotent(orders: OrderService) -> None:
    order_id = await _paid_order(orders)
    first, _, created = await orders.refund(order_id, _refund(refund_no="R1", amount=500))
    again, order, created_again = await orders.refund(order_id, _refund(refund_no="R1", amount=500))
    assert created and not created_again
    assert again["id"] == first["id"]
    assert order.refunded_amount == 500
    with pytest.raises(Conflict) as refused:
        await orders.refund(order_id, _refund(refund_no="R1", amount=600))
    assert refused.value.code == "refund.duplicate_conflict"
    assert (
        len([e for e in await order_events(orders, order_id) if e["type"] == "order.refunded"]) == 1
    )


async def test_concurrent_refunds_never_overdraw(orders: OrderService) -> None:
    order_id = await _paid_order(orders)
    results = await asyncio.gather(
        *(orders.refund(order_id, _refund(refund_no=f"R{n}", amount=3000)) for n in range(6)),
        return_exceptions=True,
    )
    done = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(done) == 4 and len(refused) == 2
    assert all(r.code in ("refund.exceeds_paid", "order.busy") for r in refused)
    order = await orders.get(order_id)
    assert order.refunded_amount == 12000
    assert sum(i.refunded_amount for i in order.items) == 12000


@pytest.mark.parametrize(
    ("body", "code", "error"),
    [
        ({"refund_no": "X", "amount": 0}, "refund.invalid_amount", BadRequest),
        ({"refund_no": "X", "amount": -5}, "refund.invalid_amount", BadRequest),
        (
            {"refund_no": "X", "items": [{"sku": "Z", "amount": 1}]},
            "refund.unknown_sku",
            BadRequest,
        ),
        (
            {"refund_no": "X", "items": [{"sku": "A", "amount": 1}, {"sku": "A", "amount": 1}]},
            "refund.duplicate_sku",
            BadRequest,
        ),
        ({"refund_no": "X", "amount": 5, "items": [{"sku": "A"}]}, "refund.ambiguous", BadRequest),
    ],
)
async def test_bad_refunds_are_refused_and_nothing_changes(
    orders: OrderService, body: dict[str, object], code: str, error: type[Exception]
) -> None:
    order_id = await _paid_order(orders)
    with pytest.raises(error) as refused:
        await orders.refund(order_id, _refund(**body))
    assert refused.value.code == code  # type: ignore[attr-defined]
    assert (await orders.get(order_id)).refunded_amount == 0


async def test_unpaid_and_closed_orders_cannot_be_refunded(orders: OrderService) -> None:
    order, _ = await orders.create_order(OrderIn.model_validate(order_body()))
    with pytest.raises(Conflict) as unpaid:
        await orders.refund(order.id, _refund(refund_no="R1", amount=1))
    assert unpaid.value.code == "order.not_paid"
    await orders.close(order.id)
    with pytest.raises(Conflict) as closed:
        await orders.refund(order.id, _refund(refund_no="R1", amount=1))
    assert closed.value.code == "order.closed"


async def test_a_completed_order_can_still_be_refunded(orders: OrderService) -> None:
    order_id = await _paid_order(orders)
    await orders.complete(order_id)
    _, order, _ = await orders.refund(order_id, _refund(refund_no="R1", items=[{"sku": "A"}]))
    assert order.status == "completed" and order.refunded_amount == 9000


def _order_of(paid: list[int], refunded: list[int]) -> Order:
    order = Order(
        1,
        "p",
        "n",
        1,
        "CNY",
        "paid",
        None,
        None,
        [],
        "none",
        0,
        sum(paid),
        sum(refunded),
        "",
        datetime(2026, 1, 1),
        None,
        None,
        None,
    )
    order.items = [
        Item(n + 1, f"S{n}", "c", 1, p, p, r)
        for n, (p, r) in enumerate(zip(paid, refunded, strict=True))
    ]
    return order


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 100)), min_size=1, max_size=8),
    st.integers(1, 10**8),
)
def test_spread_sums_exactly_and_never_exceeds_an_item(
    lines: list[tuple[int, int]], wanted: int
) -> None:
    paid = [p for p, _ in lines]
    refunded = [p * pct // 100 for p, pct in lines]
    order = _order_of(paid, refunded)
    remaining = sum(p - r for p, r in zip(paid, refunded, strict=True))
    if remaining == 0:
        return
    amount = min(wanted, remaining)
    parts = split_refund(order, RefundIn(refund_no="R", amount=amount))
    assert sum(a for _, a in parts) == amount
    assert all(0 < a <= item.remaining_amount for item, a in parts)
