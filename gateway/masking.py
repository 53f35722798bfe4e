"""Masking of personal data in responses, at the gateway (defence in depth).

The services mask what they return unless the caller holds ``pii:read``; the gateway masks
again any personal field that still arrives in clear, so one service forgetting cannot leak
a phone number. A body is parsed only when it names one of these fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from libs.common.masking import (
    mask_account,
    mask_bank_card,
    mask_email,
    mask_id_number,
    mask_name,
    mask_phone,
)

MASKERS: dict[str, Callable[[str | None], str | None]] = {
    "phone": mask_phone,
    "mobile": mask_phone,
    "real_name": mask_name,
    "id_number": mask_id_number,
    "bank_card": mask_bank_card,
    "email": mask_email,
    "wechat_openid": mask_account,
    "alipay_account": mask_account,
}
_NEEDLES = tuple(f'"{name}"'.encode() for name in MASKERS)


def _already_masked(value: str) -> bool:
    return "*" in value or value.startswith("尾号")


def _walk(value: Any) -> tuple[Any, bool]:
    changed = False
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            masker = MASKERS.get(key)
            if masker is not None and isinstance(item, str) and item and not _already_masked(item):
                out[key] = masker(item)
                changed = True
            else:
                out[key], sub = _walk(item)
                changed = changed or sub
        return out, changed
    if isinstance(value, list):
        items = []
        for item in value:
            masked, sub = _walk(item)
            items.append(masked)
            changed = changed or sub
        return items, changed
    return value, False


def mask_value(value: Any) -> Any:
    return _walk(value)[0]


def mask_json_body(body: bytes) -> bytes:
    """The body with clear personal fields masked (unchanged bytes when nothing was)."""
    if not any(needle in body for needle in _NEEDLES):
        return body
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    masked, changed = _walk(parsed)
    return orjson.dumps(masked) if changed else body
