"""Business settings (``GET/PUT /api/v1/settings/{service}``): typed per service, stored in
that service's database, partial updates, in force in all its processes within a second.

Each process keeps the last read for at most half a second, so a change made through any
replica is seen by every replica within a second without any broker or Redis involved.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import orjson
from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import Column, DateTime, MetaData, String, Table, Text, select

from libs.common.auth import Caller
from libs.common.db.engine import Database, Tx
from libs.common.db.sql import upsert_replace
from libs.common.errors import TuikeError
from libs.common.messaging.outbox import utcnow

business_settings_metadata = MetaData()
business_settings = Table(
    "business_settings",
    business_settings_metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

M = TypeVar("M", bound=BaseModel)
CACHE_SECONDS = 0.5


class SettingsModel(BaseModel):
    """Base of every service's business settings: unknown names are refused."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# Extra checks a service runs before a change is saved (e.g. rules in force vs a stricter
# compliance profile); raise a TuikeError to refuse.
ChangeCheck = Callable[[Tx, Any, Any], Awaitable[None]]


class SettingsStore(Generic[M]):
    def __init__(self, model: type[M], db: Database) -> None:
        self.model = model
        self.db = db
        self._cached: M | None = None
        self._loaded_at = 0.0

    async def _load(self, rows: list[tuple[str, str]]) -> M:
        stored = {name: orjson.loads(value) for name, value in rows}
        known = {k: v for k, v in stored.items() if k in self.model.model_fields}
        return self.model.model_validate(known)

    async def current(self) -> M:
        """The settings in force (at most half a second old)."""
        if self._cached is not None and time.monotonic() - self._loaded_at < CACHE_SECONDS:
            return self._cached
        async with self.db.read(may_lag=False) as conn:
            rows = (
                await conn.execute(select(business_settings.c.name, business_settings.c.value))
            ).all()
        self._cached = await self._load([(r[0], r[1]) for r in rows])
        self._loaded_at = time.monotonic()
        return self._cached

    async def in_tx(self, tx: Tx) -> M:
        """The settings as this transaction sees them (for decisions inside a write)."""
        conn = await tx.main()
        rows = (
            await conn.execute(select(business_settings.c.name, business_settings.c.value))
        ).all()
        return await self._load([(r[0], r[1]) for r in rows])

    async def update(self, tx: Tx, patch: dict[str, Any], check: ChangeCheck | None = None) -> M:
        """Apply a partial update; the merged result must validate as a whole."""
        before = await self.in_tx(tx)
        try:
            after = self.model.model_validate({**before.model_dump(), **patch})
        except ValidationError as exc:
            raise TuikeError(
                "invalid settings",
                code="settings.invalid",
                status=422,
                details={
                    "errors": [
                        {"loc": [str(p) for p in e["loc"]], "msg": e["msg"]} for e in exc.errors()
                    ]
                },
            ) from None
        if check is not None:
            await check(tx, before, after)
        changed = {
            name: value for name, value in after.model_dump(mode="json").items() if name in patch
        }
        now = utcnow()
        await upsert_replace(
            await tx.main(),
            business_settings,
            [
                {"name": n, "value": orjson.dumps(v).decode(), "updated_at": now}
                for n, v in changed.items()
            ],
            ["name"],
            ["value", "updated_at"],
        )
        self._cached = None

        async def forget() -> None:
            self._cached = None

        tx.after_commit(forget)
        return after


def settings_router(
    service: str,
    store_of: Callable[..., Awaitable[SettingsStore[Any]]],
    caller_of: Callable[..., Awaitable[Caller]],
    check: ChangeCheck | None = None,
) -> APIRouter:
    router = APIRouter(prefix=f"/api/v1/settings/{service}", tags=["settings"])

    @router.get("")
    async def read_settings(
        store: SettingsStore[Any] = Depends(store_of), caller: Caller = Depends(caller_of)
    ) -> dict[str, Any]:
        caller.require("finance")
        return (await store.current()).model_dump(mode="json")

    @router.put("")
    async def change_settings(
        patch: dict[str, Any] = Body(..., examples=[{}]),
        store: SettingsStore[Any] = Depends(store_of),
        caller: Caller = Depends(caller_of),
    ) -> dict[str, Any]:
        caller.require()  # admins only

        async def work(tx: Tx) -> BaseModel:
            return await store.update(tx, patch, check)

        return (await store.db.run(work)).model_dump(mode="json")

    return router
