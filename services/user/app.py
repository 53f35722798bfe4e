"""The user service: FastAPI app factory and its parts (ARCHITECTURE §1)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fastapi import FastAPI
from starlette.routing import Route

from libs.common.diagnostics import diagnostics_router
from libs.common.runtime import Runtime, ServiceSpec, Task, create_service_app
from services.user.api import ancestors_lean, bind_lean, children_lean, router, team_lean
from services.user.consumers import subscriptions
from services.user.migrations import MIGRATIONS
from services.user.moves import move_worker
from services.user.pii import pii_of, pii_worker
from services.user.settings import UserDeploySettings, UserSettings


def tasks(runtime: Runtime) -> Sequence[Task]:
    async def subtree_moves(stop: asyncio.Event) -> None:
        await move_worker(runtime.db, stop)

    async def seal_personal_data(stop: asyncio.Event) -> None:
        batch = getattr(runtime.settings, "pii_backfill_batch_size", 500)
        await pii_worker(runtime.db, pii_of(runtime), stop, batch)

    return [subtree_moves, seal_personal_data]


async def check_pii_keys(runtime: Runtime) -> None:
    """Build the personal-data keys at start: a bad key, or missing keys where
    TUIKE_PII_KEYS_REQUIRED is set, stops the process here rather than on a request."""
    pii_of(runtime)


SPEC = ServiceSpec(
    name="user",
    migrations=MIGRATIONS,
    routers=[router, diagnostics_router("user")],
    subscriptions=subscriptions,
    tasks=tasks,
    settings_model=UserSettings,
    settings_class=UserDeploySettings,
    on_start=check_pii_keys,
    lean_routes=[
        Route("/api/v1/relations/bind", bind_lean, methods=["POST"]),
        Route("/api/v1/relations/{user_id}/ancestors", ancestors_lean, methods=["GET"]),
        Route("/api/v1/relations/{user_id}/children", children_lean, methods=["GET"]),
        Route("/api/v1/relations/{user_id}/team", team_lean, methods=["GET"]),
    ],
)


def create_app() -> FastAPI:
    return create_service_app(SPEC)
