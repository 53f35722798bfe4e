"""The user service: FastAPI app factory and its parts (ARCHITECTURE §1)."""

from __future__ import annotations

from fastapi import FastAPI

from libs.common.diagnostics import diagnostics_router
from libs.common.runtime import ServiceSpec, create_service_app
from services.user.api import router
from services.user.consumers import subscriptions
from services.user.migrations import MIGRATIONS

SPEC = ServiceSpec(
    name="user",
    migrations=MIGRATIONS,
    routers=[router, diagnostics_router("user")],
    subscriptions=subscriptions,
)


def create_app() -> FastAPI:
    return create_service_app(SPEC)
