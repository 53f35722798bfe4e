"""The stats service: FastAPI app factory and its parts (ARCHITECTURE §1)."""

from __future__ import annotations

from fastapi import FastAPI

from libs.common.diagnostics import diagnostics_router
from libs.common.runtime import ServiceSpec, create_service_app
from services.stats.api import router
from services.stats.consumers import subscriptions, tasks
from services.stats.migrations import MIGRATIONS

SPEC = ServiceSpec(
    name="stats",
    migrations=MIGRATIONS,
    routers=[router, diagnostics_router("stats")],
    subscriptions=subscriptions,
    tasks=tasks,
)


def create_app() -> FastAPI:
    return create_service_app(SPEC)
