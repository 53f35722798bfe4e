"""Pipeline probes: an operator (or a test) sends a probe event through one service's outbox
and checks that every other service's consumer applied it exactly once.

``POST /api/v1/diagnostics/{service}/probes`` writes a ``diagnostic.probe`` event;
``GET /api/v1/diagnostics/{service}/probes/{probe_id}`` says how many times this service
applied it (1 is right; 0 = not arrived yet; more = a duplicate got through);
``POST /api/v1/diagnostics/{service}/outbox/{event_id}/republish`` publishes an outbox row
again (replaying an event by hand; consumers must absorb it).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, Field
from sqlalchemy import func, select, update

from libs.common.auth import Caller
from libs.common.db.common_tables import probe_receipts
from libs.common.db.engine import Tx
from libs.common.errors import NotFound
from libs.common.messaging.consumer import Subscription
from libs.common.messaging.envelope import DIAGNOSTIC_EVENTS, Envelope, make_event
from libs.common.messaging.outbox import NOT_PUBLISHED, outbox, publish, utcnow
from libs.common.runtime import Runtime, get_caller, get_runtime


class ProbeRequest(BaseModel):
    crash_at: str | None = Field(
        default=None,
        description="fault injection (only where enabled): crash a consumer at this point",
    )


class ProbeCreated(BaseModel):
    probe_id: str
    event_id: str


class ProbeReceipts(BaseModel):
    service: str
    probe_id: str
    applied_count: int


def diagnostics_router(service: str) -> APIRouter:
    router = APIRouter(prefix=f"/api/v1/diagnostics/{service}", tags=["diagnostics"])

    @router.post("/probes", status_code=201, response_model=ProbeCreated)
    async def send_probe(
        body: ProbeRequest | None = Body(default=None),
        runtime: Runtime = Depends(get_runtime),
        caller: Caller = Depends(get_caller),
    ) -> ProbeCreated:
        caller.require()
        probe_id = secrets.token_hex(8)
        data: dict[str, Any] = {"probe_id": probe_id}
        if body and body.crash_at:
            data["_crash_at"] = body.crash_at
        event = make_event("diagnostic.probe", probe_id, key=probe_id, data=data, source=service)

        async def work(tx: Tx) -> None:
            await publish(tx, DIAGNOSTIC_EVENTS, event)

        await runtime.db.run(work)
        return ProbeCreated(probe_id=probe_id, event_id=event.id)

    @router.get("/probes/{probe_id}", response_model=ProbeReceipts)
    async def probe_receipts_of(
        probe_id: str, runtime: Runtime = Depends(get_runtime), caller: Caller = Depends(get_caller)
    ) -> ProbeReceipts:
        caller.require()
        async with runtime.db.read(may_lag=False) as conn:
            count = await conn.scalar(
                select(func.count())
                .select_from(probe_receipts)
                .where(probe_receipts.c.probe_id == probe_id)
            )
        return ProbeReceipts(service=service, probe_id=probe_id, applied_count=int(count or 0))

    @router.post("/outbox/{event_id}/republish", status_code=202)
    async def republish(
        event_id: str, runtime: Runtime = Depends(get_runtime), caller: Caller = Depends(get_caller)
    ) -> dict[str, str]:
        caller.require()

        async def work(tx: Tx) -> int:
            result = await (await tx.main()).execute(
                update(outbox)
                .where(outbox.c.event_id == event_id)
                .values(published_at=NOT_PUBLISHED)
            )
            for listener in tx.db.outbox_listeners:
                tx.after_commit(listener)
            return int(result.rowcount or 0)

        if not await runtime.db.run(work):
            raise NotFound(f"no outbox event {event_id}", code="outbox.not_found")
        return {"event_id": event_id, "status": "queued"}

    return router


async def _record_probes(tx: Tx, events: Sequence[Envelope]) -> None:
    conn = await tx.main()
    now = utcnow()
    await conn.execute(
        probe_receipts.insert(),
        [{"probe_id": e.data["probe_id"], "event_id": e.id, "received_at": now} for e in events],
    )


def probe_subscription() -> Subscription:
    return Subscription(
        name="diagnostics",
        topics=[DIAGNOSTIC_EVENTS],
        handler=_record_probes,
        event_types=frozenset({"diagnostic.probe"}),
    )
