"""Event handlers of the order service: decode, call the same service functions as the API.

``platform.orders`` carries what platforms publish: the REST bodies inside the §8 envelope.
The type says what happened on the platform:

- ``order.placed`` (or ``order.created``): the body of ``POST /api/v1/orders``;
- ``order.paid`` / ``order.completed`` / ``order.closed``: ``{platform, order_no, at?}``;
- ``order.refunded``: ``{platform, order_no}`` plus the body of a refund.

Key the messages by order number, so one order's messages stay in order. A message that can
never apply (a malformed body, a conflicting replay, an illegal move) is a poison message: it
goes to ``platform.orders.dlq`` and the ``dead_letters`` table; one that may only be early (a
move of an order not seen yet, a refund or completion of an order not paid yet) is retried a
bounded number of times first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from libs.common.db.engine import Tx
from libs.common.db.global_index import lookup
from libs.common.diagnostics import probe_subscription
from libs.common.errors import TuikeError
from libs.common.messaging.consumer import PoisonMessage, Subscription
from libs.common.messaging.envelope import PLATFORM_ORDERS, Envelope
from libs.common.runtime import Runtime
from services.order import lifecycle
from services.order.models import ORDER_NO_INDEX
from services.order.records import order_no_key
from services.order.schemas import LifecycleIn, OrderIn, RefundIn
from services.order.service import OrderService, order_service

PLACED = frozenset({"order.placed", "order.created"})
MOVES = frozenset({"order.paid", "order.completed", "order.closed"})
REFUNDED = "order.refunded"
RETRYABLE = frozenset({"order.not_paid"})


class _Number(BaseModel):
    model_config = ConfigDict(extra="allow")
    platform: str = Field(default="default", min_length=1, max_length=32)
    order_no: str = Field(min_length=1, max_length=128)


async def _order_id(tx: Tx, data: dict[str, Any]) -> int:
    number = _Number.model_validate(data)
    order_id = await lookup(
        await tx.main(), ORDER_NO_INDEX, order_no_key(number.platform, number.order_no)
    )
    if order_id is None:
        # Maybe the placement is still behind us on another partition: retry, then dead-letter.
        raise LookupError(f"no order {number.order_no!r} of {number.platform!r} yet")
    return order_id


def _without_number(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in ("platform", "order_no")}


async def apply_platform_event(service: OrderService, tx: Tx, event: Envelope) -> None:
    """One platform message; business refusals become poison (they would never succeed)."""
    try:
        if event.type in PLACED:
            await service.ingest(tx, OrderIn.model_validate(event.data))
        elif event.type in MOVES:
            order_id = await _order_id(tx, event.data)
            at = LifecycleIn.model_validate(_without_number(event.data)).at
            move = {
                "order.paid": lifecycle.pay,
                "order.completed": lifecycle.complete,
                "order.closed": lifecycle.close,
            }[event.type]
            await move(tx, order_id, at)
        elif event.type == REFUNDED:
            order_id = await _order_id(tx, event.data)
            await service.refund_in_tx(
                tx, order_id, RefundIn.model_validate(_without_number(event.data))
            )
        else:
            raise PoisonMessage(f"unknown platform event type {event.type!r}")
    except ValidationError as exc:
        raise PoisonMessage(f"{event.type}: malformed data: {exc.errors()[:3]}") from exc
    except TuikeError as exc:
        if exc.code in RETRYABLE:
            # The payment may be behind on another partition (a platform keying by something
            # else than the order): bounded retries, then the dead letters.
            raise RuntimeError(f"{event.type}: {exc.code}: {exc.message}") from exc
        raise PoisonMessage(f"{event.type}: {exc.code}: {exc.message}") from exc


def subscriptions(runtime: Runtime) -> Sequence[Subscription]:
    service = order_service(runtime)

    async def platform_orders(tx: Tx, events: Sequence[Envelope]) -> None:
        for event in events:
            await apply_platform_event(service, tx, event)

    return [
        probe_subscription(),
        Subscription(name="platform-orders", topics=[PLATFORM_ORDERS], handler=platform_orders),
    ]
