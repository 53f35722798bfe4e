"""Intake: validation, idempotency on (platform, order_no), sharded storage, created event,
and acceptance with attribution ``pending`` while the user service is unreachable."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from libs.common.errors import BadRequest, Conflict, NotFound
from libs.common.ids import shard_of
from services.order.models import orders as orders_table
from services.order.schemas import OrderIn
from services.order.service import OrderService
from tests.order.conftest import order_body, order_events


async def test_order_is_stored_in_the_buyers_shard_with_attribution_pending(
    orders: OrderService,
) -> None:
    order, created = await orders.create_order(OrderIn.model_validate(order_body()))
    assert created
    assert shard_of(order.id) == shard_of(123456789)
    assert order.status == "created"
    assert order.attribution_status == "pending"
    assert order.promoter_id is None and order.beneficiaries == []
    assert order.paid_amount == 12001  # the items, not shipping
    assert order.shipping_amount == 1000
    assert [(i.sku, i.paid_amount, i.refunded_amount) for i in order.items] == [
        ("A", 9000, 0),
        ("B", 3001, 0),
    ]
    async with orders.db.read_shard(shard_of(order.id)) as conn:
        table = orders_table.for_shard(shard_of(123456789))
        assert (await conn.execute(table.select())).first() is not None
    by_number = await orders.id_by_number("shop", "N-1")
    assert by_number == order.id
    events = await order_events(orders, order.id)
    assert [e["type"] for e in events] == ["order.created"]
    assert events[0]["id"] == f"order.created:{order.id}"
    assert events[0]["data"]["attribution_status"] == "pending"
    assert events[0]["data"]["items"][0]["paid_amount"] == 9000


async def test_same_body_replays_the_order_and_another_body_is_a_409(
    orders: OrderService,
) -> None:
    first, created = await orders.create_order(OrderIn.model_validate(order_body()))
    again, created_again = await orders.create_order(OrderIn.model_validate(order_body()))
    assert created and not created_again
    assert again.id == first.id
    changed = order_body(shipping_amount=0)
    with pytest.raises(Conflict) as refused:
        await orders.create_order(OrderIn.model_validate(changed))
    assert refused.value.code == "order.duplicate_conflict"
    assert refused.value.details == {"order_id": str(first.id)}
    # The same number on another platform is another order.
    other, created_other = await orders.create_order(
        OrderIn.model_validate(order_body(platform="other"))
    )
    assert created_other and other.id != first.id
    assert len(await order_events(orders)) == 2


async def test_concurrent_identical_intakes_make_one_order(orders: OrderService) -> None:
    results = await asyncio.gather(
        *(orders.create_order(OrderIn.model_validate(order_body())) for _ in range(5))
    )
    assert len({order.id for order, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(await order_events(orders)) == 1


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"currency": "XYZ"}, "order.unsupported_currency"),
        ({"shipping_amount": -1}, "order.invalid_amount"),
        (
            {"items": [{"sku": "A", "quantity": 1, "unit_price_amount": -5, "paid_amount": 0}]},
            "order.invalid_amount",
        ),
        (
            {"items": [{"sku": "A", "quantity": 2, "unit_price_amount": 100, "paid_amount": 201}]},
            "order.item_overpaid",
        ),
        (
            {
                "items": [
                    {"sku": "A", "quantity": 1, "unit_price_amount": 100, "paid_amount": 100},
                    {"sku": "A", "quantity": 1, "unit_price_amount": 100, "paid_amount": 100},
                ]
            },
            "order.duplicate_sku",
        ),
    ],
)
async def test_invalid_orders_are_refused_and_nothing_is_stored(
    orders: OrderService, change: dict[str, object], code: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        await orders.create_order(OrderIn.model_validate(order_body(**change)))
    assert refused.value.code == code
    assert refused.value.status == 400
    with pytest.raises(NotFound):
        await orders.id_by_number("shop", "N-1")
    assert await order_events(orders) == []


@pytest.mark.parametrize(
    "change",
    [
        {"items": []},
        {"buyer_user_id": "abc"},
        {"items": [{"sku": "A", "quantity": 1, "unit_price_amount": 1.5, "paid_amount": 1}]},
        {"items": [{"sku": "A", "quantity": 0, "unit_price_amount": 1, "paid_amount": 0}]},
        {"unknown_field": 1},
    ],
)
def test_malformed_bodies_do_not_parse(change: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        OrderIn.model_validate(order_body(**change))


async def test_currency_is_normalised_to_upper_case(orders: OrderService) -> None:
    order, _ = await orders.create_order(OrderIn.model_validate(order_body(currency="usd")))
    assert order.currency == "USD"
