"""The order service: FastAPI app factory and its parts (ARCHITECTURE §1)."""

from __future__ import annotations

from fastapi import FastAPI

from libs.common.diagnostics import diagnostics_router
from libs.common.runtime import ServiceSpec, create_service_app
from services.order.api import router
from services.order.consumers import subscriptions
from services.order.migrations import MIGRATIONS

SPEC = ServiceSpec(
    name="order",
    migrations=MIGRATIONS,
    routers=[router, diagnostics_router("order")],
    subscriptions=subscriptions,
)


def create_app() -> FastAPI:
    return create_service_app(SPEC)
