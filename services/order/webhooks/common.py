"""What the webhook adapters share: signature checks, money parsing, buyers, and applying a
platform's view of an order through the same use cases as REST."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from libs.common.errors import BadRequest, Conflict, ServiceUnavailable, TuikeError, Unauthorized
from libs.common.money import to_minor_units
from services.order.records import Order
from services.order.schemas import OrderIn
from services.order.service import OrderService
from services.order.user_client import UserServiceUnavailable

log = logging.getLogger("tuike.order.webhooks")


def verify_base64_hmac(secret: str | None, raw: bytes, signature: str | None) -> None:
    """HMAC-SHA256 of the raw body, base64, as Shopify and WooCommerce both sign; 401
    ``webhook.bad_signature`` otherwise (also when no secret is configured)."""
    if not secret or not signature:
        raise Unauthorized("missing webhook signature", code="webhook.bad_signature")
    expected = base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected, signature.strip()):
        raise Unauthorized("webhook signature does not match", code="webhook.bad_signature")


def sign(secret: str, raw: bytes) -> str:
    """The signature a platform would send (for tests and the benchmark)."""
    return base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest()).decode()


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("the webhook body is not JSON", code="webhook.invalid_body") from None
    if not isinstance(payload, dict):
        raise BadRequest("the webhook body is not a JSON object", code="webhook.invalid_body")
    return payload


def minor(amount: Any, currency: str, field: str) -> int:
    """A platform's decimal string of major units as minor units of ``currency``."""
    try:
        text = str(amount if amount not in (None, "") else "0")
        Decimal(text)
        return to_minor_units(text, currency)
    except (ValueError, InvalidOperation):
        raise BadRequest(
            f"{field}: {amount!r} is not an amount of {currency}",
            code="webhook.invalid_amount",
            details={"field": field},
        ) from None


def header(headers: Mapping[str, str], name: str) -> str | None:
    return headers.get(name) or headers.get(name.lower())


async def buyer_id(
    service: OrderService, platform: str, external_id: str, nickname: str | None, phone: str | None
) -> int:
    """The Tuike user of the platform customer; 503 when the user service is away (the
    platform retries the webhook)."""
    try:
        return await service.users.ensure_user(platform, external_id, nickname, phone)
    except UserServiceUnavailable as exc:
        raise ServiceUnavailable(
            "the user service is unavailable; retry the webhook",
            code="webhook.retry_later",
            details={"reason": str(exc)[:200]},
        ) from None


def unique_skus(lines: list[tuple[str, str]]) -> list[str]:
    """(sku, line id) → a sku unique in the order: a sku on several lines gets ``#line``."""
    counts: dict[str, int] = {}
    for sku, _ in lines:
        counts[sku] = counts.get(sku, 0) + 1
    return [sku if counts[sku] == 1 else f"{sku}#{line}" for sku, line in lines]


async def take_in(service: OrderService, body: OrderIn) -> tuple[Order, bool, bool]:
    """Intake for a webhook: returns (order, created, body_changed). A platform sends the
    whole order on every update; when it differs from what we took in first, the first
    snapshot stays (commissions were computed on it) and the change is only logged."""
    try:
        order, created = await service.create_order(body)
        return order, created, False
    except Conflict as exc:
        if exc.code != "order.duplicate_conflict":
            raise
        log.warning(
            "%s order %s changed after intake; keeping the first", body.platform, body.order_no
        )
        order = await service.get(int(exc.details["order_id"]))
        return order, False, True


async def attempt(action: str, coroutine: Any) -> str:
    """Run one lifecycle step; a refusal (409) is reported, not raised: the platform's view
    moved on and retrying the webhook would not change it."""
    try:
        await coroutine
        return "ok"
    except TuikeError as exc:
        if exc.status != 409:
            raise
        log.info("webhook %s refused: %s", action, exc.code)
        return exc.code


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
