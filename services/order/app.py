"""The order service: FastAPI app factory and its parts (ARCHITECTURE §1)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from fastapi import FastAPI

from libs.common.diagnostics import diagnostics_router
from libs.common.runtime import Runtime, ServiceSpec, Task, create_service_app
from services.order.api import router, webhooks
from services.order.consumers import subscriptions
from services.order.migrations import MIGRATIONS
from services.order.service import order_service
from services.order.settings import OrderServiceSettings, OrderSettings

log = logging.getLogger("tuike.order")


def tasks(runtime: Runtime) -> Sequence[Task]:
    service = order_service(runtime)

    async def attribution_resolver(stop: asyncio.Event) -> None:
        try:
            await service.resolver.run(stop)
        finally:
            await service.users.close()

    async def auto_completion(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                completed = await service.complete_due()
                if completed:
                    log.info("auto-completed %d paid orders", completed)
            except Exception:
                log.exception("auto-completion pass failed; retrying")
            try:
                await asyncio.wait_for(
                    stop.wait(), timeout=service.settings.auto_complete_interval_seconds
                )
            except TimeoutError:
                pass

    return [attribution_resolver, auto_completion]


SPEC = ServiceSpec(
    name="order",
    migrations=MIGRATIONS,
    routers=[router, webhooks, diagnostics_router("order")],
    subscriptions=subscriptions,
    tasks=tasks,
    settings_model=OrderSettings,
    settings_class=OrderServiceSettings,
)


def create_app() -> FastAPI:
    return create_service_app(SPEC)
