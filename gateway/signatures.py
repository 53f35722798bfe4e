"""HMAC request signatures of platform API keys, replay-protected.

A signed request carries:

    X-Tuike-Key-Id: <key_id>
    X-Tuike-Timestamp: <unix seconds>
    X-Tuike-Nonce: <8..64 characters [A-Za-z0-9_-]>
    X-Tuike-Signature: hex(HMAC-SHA256(sha256_hex(secret), canonical))

    canonical = METHOD \\n path[?query] \\n timestamp \\n nonce \\n sha256_hex(body)

The timestamp must be within ``signature_window_seconds`` of the gateway's clock and the
nonce unseen for that key within twice the window (Redis ``SET NX``). If Redis cannot be
reached the request is refused (503): replay protection fails closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import secrets
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.keys import ApiKey, KeyStore, secret_digest, split_key
from libs.common.errors import ServiceUnavailable, Unauthorized
from libs.common.metrics import REDIS_FAILURES

KEY_ID_HEADER = "x-tuike-key-id"
TIMESTAMP_HEADER = "x-tuike-timestamp"
NONCE_HEADER = "x-tuike-nonce"
SIGNATURE_HEADER = "x-tuike-signature"
_NONCE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def canonical_request(method: str, target: str, timestamp: str, nonce: str, body: bytes) -> str:
    return "\n".join([method.upper(), target, timestamp, nonce, hashlib.sha256(body).hexdigest()])


def signature(signing_key: str, canonical: str) -> str:
    return hmac.new(signing_key.encode(), canonical.encode(), hashlib.sha256).hexdigest()


def sign_request(
    api_key: str,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    timestamp: int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers a platform sends with a signed request (``target`` = path[?query])."""
    parts = split_key(api_key)
    if parts is None:
        raise ValueError("not a Tuike API key")
    key_id, secret = parts
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_urlsafe(16)
    canonical = canonical_request(method, target, stamp, nonce, body)
    return {
        "X-Tuike-Key-Id": key_id,
        "X-Tuike-Timestamp": stamp,
        "X-Tuike-Nonce": nonce,
        "X-Tuike-Signature": signature(secret_digest(secret), canonical),
    }


def is_signed(headers: dict[str, str]) -> bool:
    return KEY_ID_HEADER in headers or SIGNATURE_HEADER in headers


async def verify_signed(
    *,
    keys: KeyStore,
    redis: Redis,
    redis_prefix: str,
    window_seconds: int,
    method: str,
    target: str,
    headers: dict[str, str],
    body: bytes,
    timeout_seconds: float = 2.0,
) -> ApiKey:
    """The key that signed this request; 401 for a bad, stale or replayed signature."""
    key_id = headers.get(KEY_ID_HEADER, "")
    stamp = headers.get(TIMESTAMP_HEADER, "")
    nonce = headers.get(NONCE_HEADER, "")
    given = headers.get(SIGNATURE_HEADER, "")
    if not (key_id and stamp and nonce and given):
        raise Unauthorized(
            "a signed request needs the key id, timestamp, nonce and signature headers",
            code="auth.bad_signature",
        )
    if not stamp.isdigit() or abs(time.time() - int(stamp)) > window_seconds:
        raise Unauthorized(
            "the request timestamp is outside the allowed window",
            code="auth.stale_request",
            details={"window_seconds": window_seconds},
        )
    if not _NONCE.match(nonce):
        raise Unauthorized(
            "the nonce must be 8-64 characters [A-Za-z0-9_-]", code="auth.bad_signature"
        )
    key = await keys.find(key_id[:32])
    if key is None:
        raise Unauthorized("unknown or revoked API key", code="auth.invalid_key")
    expected = signature(key.secret_sha256, canonical_request(method, target, stamp, nonce, body))
    if not hmac.compare_digest(expected, given.lower()):
        raise Unauthorized("the request signature does not match", code="auth.bad_signature")
    try:
        async with asyncio.timeout(timeout_seconds):
            fresh = await redis.set(
                f"{redis_prefix}gateway:nonce:{key.key_id}:{nonce}",
                b"1",
                nx=True,
                ex=2 * window_seconds,
            )
    except (RedisError, TimeoutError) as exc:
        REDIS_FAILURES.labels("nonce").inc()
        raise ServiceUnavailable(
            "replay protection is unavailable; retry shortly", code="auth.unavailable"
        ) from exc
    if not fresh:
        raise Unauthorized("this nonce was already used", code="auth.replayed")
    return key
