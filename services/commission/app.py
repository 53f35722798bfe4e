"""The commission service: FastAPI app factory and its parts (ARCHITECTURE §1)."""

from __future__ import annotations

from fastapi import FastAPI

from libs.common.diagnostics import diagnostics_router
from libs.common.runtime import ServiceSpec, create_service_app
from services.commission.api import router
from services.commission.consumers import subscriptions
from services.commission.migrations import MIGRATIONS

SPEC = ServiceSpec(
    name="commission",
    migrations=MIGRATIONS,
    routers=[router, diagnostics_router("commission")],
    subscriptions=subscriptions,
)


def create_app() -> FastAPI:
    return create_service_app(SPEC)
