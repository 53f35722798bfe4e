"""Platform API keys, kept in the gateway's own database.

A key is ``tk_<key_id>_<secret>``. We store only ``sha256(secret)``: the key is shown once,
at creation, and can never be read back. The same digest is the HMAC key of signed
requests (docs/security.md), so a client derives it from its key and the gateway never
needs the secret itself. Lookups are by ``key_id`` and cached for a few seconds, so a
revocation reaches every gateway replica within ``api_key_cache_seconds``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    select,
    update,
)

from libs.common import audit
from libs.common.auth import GATEWAY_ASSERTION_SECONDS, PLATFORM, Caller, gateway_assertion
from libs.common.db.engine import Database, Tx
from libs.common.db.migrations import Migration, MigrationContext
from libs.common.errors import NotFound
from libs.common.messaging.outbox import utcnow

KEY_PREFIX = "tk_"

keys_metadata = MetaData()
api_keys = Table(
    "api_keys",
    keys_metadata,
    Column("key_id", String(32), primary_key=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("platform", String(64), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("created_by", String(191), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("revoked_at", DateTime, nullable=True),
)


async def _create_tables(ctx: MigrationContext) -> None:
    await ctx.create_tables(keys_metadata)
    await ctx.create_tables(audit.audit_metadata)


GATEWAY_MIGRATIONS = [Migration(1, "gateway: api keys and audit log", _create_tables)]


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    platform: str
    name: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None
    secret_sha256: str

    def caller(self) -> Caller:
        return Caller(
            subject=f"platform:{self.platform}:{self.key_id}",
            roles=frozenset({PLATFORM}),
            platform=self.platform,
        )


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(presented: str) -> tuple[str, str] | None:
    """``tk_<key_id>_<secret>`` → (key_id, secret), or None if it is not shaped like a key."""
    if not presented.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = presented[len(KEY_PREFIX) :].partition("_")
    if not sep or not key_id or not secret or len(key_id) > 32:
        return None
    return key_id, secret


def _row_to_key(row: dict[str, object]) -> ApiKey:
    return ApiKey(
        key_id=str(row["key_id"]),
        platform=str(row["platform"]),
        name=str(row["name"]),
        created_by=str(row["created_by"]),
        created_at=row["created_at"],  # type: ignore[arg-type]
        revoked_at=row["revoked_at"],  # type: ignore[arg-type]
        secret_sha256=str(row["secret_sha256"]),
    )


class KeyStore:
    def __init__(self, db: Database, cache_seconds: float) -> None:
        self.db = db
        self.cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def create(self, caller: Caller, platform: str, name: str) -> tuple[ApiKey, str]:
        """A new key for ``platform``; returns it with the full key text (shown only now)."""
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        row = {
            "key_id": key_id,
            "secret_sha256": secret_digest(secret),
            "platform": platform,
            "name": name,
            "created_by": caller.subject,
            "created_at": utcnow(),
            "revoked_at": None,
        }

        async def work(tx: Tx) -> None:
            conn = await tx.main()
            await conn.execute(api_keys.insert().values(**row))
            after = {k: v for k, v in row.items() if k != "secret_sha256"}
            await audit.record(conn, caller, "api_key.create", "api_key", key_id, after=after)

        await self.db.run(work)
        return _row_to_key(row), f"{KEY_PREFIX}{key_id}_{secret}"

    async def revoke(self, caller: Caller, key_id: str) -> ApiKey:
        """Revoke a key; revoking a revoked key is a no-op that returns it."""

        async def work(tx: Tx) -> ApiKey:
            conn = await tx.main()
            row = (
                (await conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)))
                .mappings()
                .first()
            )
            if row is None:
                raise NotFound(f"no API key {key_id}", code="api_key.not_found")
            if row["revoked_at"] is not None:
                return _row_to_key(dict(row))
            now = utcnow()
            await conn.execute(
                update(api_keys)
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            await audit.record(
                conn,
                caller,
                "api_key.revoke",
                "api_key",
                key_id,
                before={"revoked_at": None},
                after={"revoked_at": now.isoformat()},
            )
            return _row_to_key({**row, "revoked_at": now})

        key = await self.db.run(work)
        self._cache.pop(key_id, None)
        return key

    async def list(self, platform: str | None = None) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.created_at.desc()).limit(1000)
        if platform:
            query = query.where(api_keys.c.platform == platform)
        async with self.db.read(may_lag=False) as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_row_to_key(dict(row)) for row in rows]

    async def find(self, key_id: str) -> ApiKey | None:
        """The active key with this id (cached briefly), or None."""
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with self.db.read(may_lag=False) as conn:
            row = (
                (await conn.execute(select(api_keys).where(api_keys.c.key_id == key_id)))
                .mappings()
                .first()
            )
        key = _row_to_key(dict(row)) if row is not None and row["revoked_at"] is None else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key_id] = (now + self.cache_seconds, key)
        return key

    async def verify_bearer(self, presented: str) -> ApiKey | None:
        """The key this full key text stands for, or None."""
        parts = split_key(presented)
        if parts is None:
            return None
        key = await self.find(parts[0])
        if key is None or not hmac.compare_digest(key.secret_sha256, secret_digest(parts[1])):
            return None
        return key


class AssertionCache:
    """Gateway assertions (libs/common/auth.py) of API-key callers, signed once and reused
    while more than half of their lifetime is left: a platform sending many requests costs
    one HMAC signature per half minute, not one per request."""

    def __init__(self, internal_key: str, max_size: int = 4096) -> None:
        self.internal_key = internal_key
        self.max_size = max_size
        self._cache: dict[Caller, tuple[float, str]] = {}

    def get(self, caller: Caller) -> str:
        now = time.monotonic()
        cached = self._cache.get(caller)
        if cached is not None and cached[0] > now:
            return cached[1]
        token = gateway_assertion(caller, self.internal_key)
        if len(self._cache) >= self.max_size:
            self._cache.clear()
        self._cache[caller] = (now + GATEWAY_ASSERTION_SECONDS / 2, token)
        return token
