"""HTTP routes of the order service: parse, authorize, call one service function, map.

Every call on an order also works by the platform's number
(``/api/v1/orders/by-number/{platform}/{order_no}/...``): platforms don't keep our ids.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request, Response

from libs.common.auth import PLATFORM, Caller
from libs.common.runtime import get_caller, runtime_of
from libs.common.schemas import parse_id
from services.order.records import Order
from services.order.schemas import (
    LifecycleIn,
    OrderIn,
    OrderOut,
    OrderRefundsOut,
    RefundIn,
    RefundOut,
)
from services.order.service import OrderRef, OrderService, order_service
from services.order.webhooks import shopify, woocommerce

router = APIRouter(prefix="/api/v1", tags=["order"])
webhooks = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])
READERS = (PLATFORM, "finance")


async def get_service(request: Request) -> OrderService:
    return order_service(runtime_of(request))


def _out(order: Order) -> OrderOut:
    return OrderOut.model_validate(order.to_api())


def _refund_out(order: Order, record: dict[str, Any]) -> RefundOut:
    return RefundOut.model_validate({**record, "currency": order.currency})


@router.post("/orders", response_model=OrderOut, status_code=201)
async def create_order(
    body: OrderIn,
    response: Response,
    caller: Caller = Depends(get_caller),
    service: OrderService = Depends(get_service),
) -> OrderOut:
    """Take an order in; a replay of the same (platform, order_no) and body returns it (200)."""
    caller.require(PLATFORM)
    order, created = await service.create_order(body)
    response.status_code = 201 if created else 200
    return _out(order)


# -- by id and by number: the same handlers behind two path shapes ------------------------
async def _read(service: OrderService, order_id: OrderRef) -> OrderOut:
    return _out(await service.get(order_id))


async def _refund(
    service: OrderService, order_id: OrderRef, body: RefundIn, response: Response
) -> RefundOut:
    record, order, created = await service.refund(order_id, body)
    response.status_code = 201 if created else 200
    return _refund_out(order, record)


async def _refunds(service: OrderService, order_id: OrderRef) -> OrderRefundsOut:
    order, records = await service.refunds_of(order_id)
    return OrderRefundsOut(items=[_refund_out(order, r) for r in records])


@router.get("/orders/{order_id}", response_model=OrderOut)
async def read_order(
    order_id: str,
    caller: Caller = Depends(get_caller),
    service: OrderService = Depends(get_service),
) -> OrderOut:
    caller.require(*READERS)
    return await _read(service, parse_id(order_id))


@router.get("/orders/by-number/{platform}/{order_no}", response_model=OrderOut)
async def read_order_by_number(
    platform: str,
    order_no: str,
    caller: Caller = Depends(get_caller),
    service: OrderService = Depends(get_service),
) -> OrderOut:
    caller.require(*READERS)
    return await _read(service, (platform, order_no))


@router.post("/orders/{order_id}/pay", response_model=OrderOut)
async def pay_order(
    order_id: str,
    body: LifecycleIn | None = Body(default=None),
    caller: Caller = Depends(get_caller),
    service: OrderService = Depends(get_service),
) -> OrderOut:
    caller.require(PLATFORM)
    return _out(await service.pay(parse_id(order_id), body.at if body else None))


@router.post("/orders/by-number/{platform}/{order_no}/pay", response_model=OrderOut)
async def pay_order_by_number(
    platform: str,
    order_no: str,
    body: LifecycleIn | None = Body(default=None),
    caller: Caller = Depends(get_caller),
    service: OrderService = Depends(get_service),
) -> OrderOut:
    caller.require(PLATFORM)
    return _out(await service.pay((platform, order_no), body.at if body else None))


@router.post("/orders/{order_id}/complete", response_model=OrderOut)
async def complete_order(
    order_id: str,
    body: LifecycleIn | None = Body(default=None),
    caller: Caller = Depends(get_caller),
    service: OrderService = Depends(get_service),
) -> OrderOut:
    caller.require(PLATFORM)
    return _out(await service.complete(parse_id(order_id), body.at if body else None))


@router.post("/orders/by-number/{platform}/{order_no}/complete", response_model=OrderOut)
async def complete_order_by_number(
    platform: str,
    order_no: str,
    body: LifecycleIn | None = Body(default=None),
    caller: Caller = Depends(get_caller),
    service: OrderService = Depends(get_service),
) -> OrderOut:
    caller.require(PLATFORM)
    return _out(await service.complete((platform, order_no), body.at if body else None))


@router.post("/orders/{order_id}/close", response_model=OrderOut)
async def close_order(
    order_id: str,
    body: LifecycleIn | None = Body(default=None),
    caller: Caller = Depends(get_caller),
    service: OrderService = Depends(get_service),
) -> OrderOut:
    caller.require(PLATFORM)
    return _out(await service.close(parse_id(order_id), body.at if body else None))


@router.post("/orders/by-number/{platform}/{order_no}/close", response_model=OrderOut)
async def close_order_by_number(
    platform: str,
    order_no: str,
    body: LifecycleIn | None = Body(default=None),
    caller: Caller = Depends(get_caller),
    service: OrderService = Depends(get_service),
) -> OrderOut:
    caller.require(PLATFORM)
    return _out(await service.close((platform, order_no), body.at if body else None))


@router.post("/orders/{order_id}/refunds", response_model=RefundOut, status_code=201)
async def refund_order(
    order_id: str,
    body: RefundIn,
    response: Response,
    caller: Caller = Depends(get_caller),
    service: OrderService = Depends(get_service),
) -> RefundOut:
    caller.require(PLATFORM)
    return await _refund(service, parse_id(order_id), body, response)


@router.post(
    "/orders/by-number/{platform}/{order_no}/refunds", response_model=RefundOut, status_code=201
)
async def refund_order_by_number(
    platform: str,
    order_no: str,
    body: RefundIn,
    response: Response,
    caller: Caller = Depends(get_caller),
    service: OrderService = Depends(get_service),
) -> RefundOut:
    caller.require(PLATFORM)
    return await _refund(service, (platform, order_no), body, response)


@router.get("/orders/{order_id}/refunds", response_model=OrderRefundsOut)
async def list_refunds(
    order_id: str,
    caller: Caller = Depends(get_caller),
    service: OrderService = Depends(get_service),
) -> OrderRefundsOut:
    caller.require(*READERS)
    return await _refunds(service, parse_id(order_id))


@router.get("/orders/by-number/{platform}/{order_no}/refunds", response_model=OrderRefundsOut)
async def list_refunds_by_number(
    platform: str,
    order_no: str,
    caller: Caller = Depends(get_caller),
    service: OrderService = Depends(get_service),
) -> OrderRefundsOut:
    caller.require(*READERS)
    return await _refunds(service, (platform, order_no))


# -- platform webhooks: public routes that check their own signatures -----------------------
@webhooks.post("/shopify/{topic_group}/{topic_action}")
async def shopify_webhook(
    topic_group: str,
    topic_action: str,
    request: Request,
    service: OrderService = Depends(get_service),
) -> dict[str, Any]:
    """Shopify ``orders/paid`` and ``refunds/create`` (the path names the topic)."""
    raw = await request.body()
    return await shopify.handle(service, f"{topic_group}/{topic_action}", raw, request.headers)


@webhooks.post("/woocommerce")
async def woocommerce_webhook(
    request: Request, service: OrderService = Depends(get_service)
) -> dict[str, Any]:
    """WooCommerce order webhooks (order.created / order.updated)."""
    raw = await request.body()
    return await woocommerce.handle(service, raw, request.headers)
