"""The commission service: FastAPI app factory and its parts (ARCHITECTURE §1)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from fastapi import FastAPI

from libs.common.diagnostics import diagnostics_router
from libs.common.messaging.outbox import utcnow
from libs.common.runtime import Runtime, ServiceSpec, Task, create_service_app
from services.commission.api import router
from services.commission.compliance import CommissionSettings, check_settings_change
from services.commission.consumers import subscriptions
from services.commission.context import CommissionServiceSettings, aware
from services.commission.migrations import MIGRATIONS, ensure_monthly_tables
from services.commission.models import tables_for
from services.commission.scheduler import SettlementScheduler
from services.commission.withdrawals.api import router as withdrawal_router

log = logging.getLogger("tuike.commission")


async def _prepare(runtime: Runtime) -> None:
    """Create this month's and the next months' tables before serving."""
    await ensure_monthly_tables(runtime.db, tables_for(runtime.settings.timezone), aware(utcnow()))


def _tasks(runtime: Runtime) -> Sequence[Task]:
    scheduler = SettlementScheduler(runtime)

    async def monthly_tables(stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=6 * 3600)
            except TimeoutError:
                await _prepare(runtime)

    async def settlement_scheduler(stop: asyncio.Event) -> None:
        await scheduler.run(stop)

    return [settlement_scheduler, monthly_tables]


SPEC = ServiceSpec(
    name="commission",
    migrations=MIGRATIONS,
    routers=[router, diagnostics_router("commission"), withdrawal_router],
    subscriptions=subscriptions,
    tasks=_tasks,
    on_start=_prepare,
    settings_model=CommissionSettings,
    settings_check=check_settings_change,
    settings_class=CommissionServiceSettings,
)


def create_app() -> FastAPI:
    return create_service_app(SPEC)
