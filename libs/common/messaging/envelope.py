"""The event envelope every message carries (ARCHITECTURE §8), and the topic names."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, Field
from pydantic_core import to_jsonable_python

PLATFORM_ORDERS = "platform.orders"
USER_EVENTS = "user.events"
ORDER_EVENTS = "order.events"
COMMISSION_EVENTS = "commission.events"
COMMISSION_SETTLE = "commission_settle"
DIAGNOSTIC_EVENTS = "diagnostic.events"

ALL_TOPICS = (
    PLATFORM_ORDERS,
    USER_EVENTS,
    ORDER_EVENTS,
    COMMISSION_EVENTS,
    COMMISSION_SETTLE,
    DIAGNOSTIC_EVENTS,
)


def dlq_topic(topic: str) -> str:
    return f"{topic}.dlq"


class Envelope(BaseModel):
    """``{id, type, version, occurred_at, source, key, data}``.

    ``id`` is deterministic from the business fact (``order.paid:{order_id}``), so publishing
    the same fact again never makes a second fact; ``key`` is the aggregate id and the
    partition key, so one aggregate's events stay in order.
    """

    id: str = Field(min_length=1, max_length=191)
    type: str = Field(min_length=1, max_length=64)
    version: int = 1
    occurred_at: datetime
    source: str
    key: str = Field(min_length=1, max_length=128)
    data: dict[str, Any]

    def to_bytes(self, data: dict[str, Any] | None = None) -> bytes:
        """The JSON form, as ``model_dump(mode="json")`` would give it, written by orjson
        directly: walking a bind's thousand ancestor ids through pydantic first cost three
        times the encoding. What orjson cannot write itself (a Decimal, a set, a model) goes
        through pydantic's own conversion. ``data``: written instead of the event's own (the
        outbox leaves big shared values out), without copying the model."""
        return orjson.dumps(
            {
                "id": self.id,
                "type": self.type,
                "version": self.version,
                "occurred_at": self.occurred_at,
                "source": self.source,
                "key": self.key,
                "data": self.data if data is None else data,
            },
            default=to_jsonable_python,
            option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS,
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        return cls.model_validate_json(raw)


def make_event(
    event_type: str,
    fact_id: str | int,
    *,
    key: str | int,
    data: dict[str, Any],
    source: str,
    occurred_at: datetime | None = None,
    version: int = 1,
) -> Envelope:
    """An envelope whose id is ``{type}:{fact_id}``."""
    return Envelope(
        id=f"{event_type}:{fact_id}",
        type=event_type,
        version=version,
        occurred_at=occurred_at or datetime.now(UTC),
        source=source,
        key=str(key),
        data=data,
    )
