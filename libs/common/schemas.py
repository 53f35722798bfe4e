"""Types shared by every API: ids as decimal strings, pages with cursors."""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, BeforeValidator, PlainSerializer, WithJsonSchema

from libs.common.ids import MAX_ID


def _parse_id(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("an id is a positive integer or its decimal string")
    if isinstance(value, int):
        parsed = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        parsed = int(value)
    else:
        raise ValueError("an id is a positive integer or its decimal string")
    if not 0 < parsed <= MAX_ID:
        raise ValueError("an id is between 1 and 2^63-1")
    return parsed


# JavaScript loses precision past 2^53: ids go out as decimal strings and come in as either.
Id = Annotated[
    int,
    BeforeValidator(_parse_id),
    PlainSerializer(lambda v: str(v), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": "^[1-9][0-9]{0,18}$", "example": "7364291047123"}),
]


def parse_id(value: str) -> int:
    """A path parameter as an id; a malformed one is a 400 ``request.bad_id``."""
    from libs.common.errors import BadRequest

    try:
        return _parse_id(value)
    except ValueError:
        raise BadRequest(f"malformed id {value[:40]!r}", code="request.bad_id") from None


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = None
