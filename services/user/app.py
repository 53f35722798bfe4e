"""The user service: FastAPI app factory and its parts (ARCHITECTURE §1)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fastapi import FastAPI

from libs.common.diagnostics import diagnostics_router
from libs.common.runtime import Runtime, ServiceSpec, Task, create_service_app
from services.user.api import router
from services.user.consumers import subscriptions
from services.user.migrations import MIGRATIONS
from services.user.moves import move_worker
from services.user.settings import UserSettings


def tasks(runtime: Runtime) -> Sequence[Task]:
    async def subtree_moves(stop: asyncio.Event) -> None:
        await move_worker(runtime.db, stop)

    return [subtree_moves]


SPEC = ServiceSpec(
    name="user",
    migrations=MIGRATIONS,
    routers=[router, diagnostics_router("user")],
    subscriptions=subscriptions,
    tasks=tasks,
    settings_model=UserSettings,
)


def create_app() -> FastAPI:
    return create_service_app(SPEC)
