"""The audit log: every admin and finance write, who did what to what and when, with the
state before and after. Each service keeps its own ``audit_log`` table in its main database
(created by the common migration) and writes the row in the same transaction as the change,
so a change and its audit record commit or roll back together.

    await audit.record(await tx.main(), caller, "withdrawal.approve", "withdrawal", wid,
                       before={"status": "pending"}, after={"status": "approved"})

Admins read it at ``GET /api/v1/audit/{service}`` (the router below; the gateway keeps its
own for API keys and for every admin/finance write that passes through it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.auth import ADMIN, FINANCE, Caller
from libs.common.logs import request_id_var
from libs.common.messaging.outbox import AutoId, utcnow

audit_metadata = MetaData()
audit_log = Table(
    "audit_log",
    audit_metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("occurred_at", DateTime, nullable=False, index=True),
    Column("actor", String(191), nullable=False, index=True),
    Column("actor_roles", String(191), nullable=False),
    Column("action", String(100), nullable=False, index=True),
    Column("target_type", String(64), nullable=False),
    Column("target_id", String(191), nullable=False),
    Column("status", Integer, nullable=True),
    Column("before_json", Text, nullable=True),
    Column("after_json", Text, nullable=True),
    Column("request_id", String(128), nullable=True),
)

# Large bodies are cut: the log is for people, and a row must fit comfortably in TEXT.
MAX_STATE_CHARS = 16_000


def is_audited(caller: Caller) -> bool:
    """Writes by admins and finance are audited (internal services act for someone else)."""
    return bool(caller.roles & {ADMIN, FINANCE})


def _json(value: Any) -> str | None:
    if value is None:
        return None
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= MAX_STATE_CHARS else text[:MAX_STATE_CHARS] + "…"


async def record(
    conn: AsyncConnection,
    caller: Caller,
    action: str,
    target_type: str,
    target_id: object,
    *,
    before: Any = None,
    after: Any = None,
    status: int | None = None,
) -> None:
    """Write one audit row on ``conn`` (inside the caller's transaction)."""
    await conn.execute(
        audit_log.insert().values(
            occurred_at=utcnow(),
            actor=caller.subject[:191],
            actor_roles=",".join(sorted(caller.roles))[:191],
            action=action[:100],
            target_type=target_type[:64],
            target_id=str(target_id)[:191],
            status=status,
            before_json=_json(before),
            after_json=_json(after),
            request_id=request_id_var.get(),
        )
    )


class AuditEntry(BaseModel):
    id: str
    occurred_at: datetime
    actor: str
    actor_roles: list[str]
    action: str
    target_type: str
    target_id: str
    status: int | None
    before: Any
    after: Any
    request_id: str | None


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None


async def list_entries(
    conn: AsyncConnection,
    *,
    actor: str | None = None,
    action: str | None = None,
    cursor: int | None = None,
    limit: int = 50,
) -> AuditPage:
    """Newest first; ``next_cursor`` pages back in time."""
    query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit + 1)
    if actor:
        query = query.where(audit_log.c.actor == actor)
    if action:
        query = query.where(audit_log.c.action == action)
    if cursor is not None:
        query = query.where(audit_log.c.id < cursor)
    rows = (await conn.execute(query)).mappings().all()
    items = [
        AuditEntry(
            id=str(row["id"]),
            occurred_at=row["occurred_at"],
            actor=row["actor"],
            actor_roles=[r for r in row["actor_roles"].split(",") if r],
            action=row["action"],
            target_type=row["target_type"],
            target_id=row["target_id"],
            status=row["status"],
            before=orjson.loads(row["before_json"]) if _is_json(row["before_json"]) else None,
            after=orjson.loads(row["after_json"]) if _is_json(row["after_json"]) else None,
            request_id=row["request_id"],
        )
        for row in rows[:limit]
    ]
    next_cursor = items[-1].id if len(rows) > limit else None
    return AuditPage(items=items, next_cursor=next_cursor)


def _is_json(text: str | None) -> bool:
    if not text:
        return False
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def audit_router(
    service: str,
    get_caller: Callable[[Request], Awaitable[Caller]],
    read_connection: Callable[[Request], AbstractAsyncContextManager[AsyncConnection]],
) -> APIRouter:
    """``GET /api/v1/audit/{service}``: admins read the audit log of this service.

    ``read_connection(request)`` is an async context manager of a read connection.
    """
    router = APIRouter(prefix=f"/api/v1/audit/{service}", tags=["audit"])

    @router.get("", response_model=AuditPage)
    async def read_audit_log(
        request: Request,
        actor: str | None = Query(default=None, max_length=191),
        action: str | None = Query(default=None, max_length=100),
        cursor: int | None = Query(default=None, ge=0),
        limit: int = Query(default=50, ge=1, le=500),
        caller: Caller = Depends(get_caller),
    ) -> AuditPage:
        caller.require()
        async with read_connection(request) as conn:
            return await list_entries(conn, actor=actor, action=action, cursor=cursor, limit=limit)

    return router
