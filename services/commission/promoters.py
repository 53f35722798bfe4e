"""The commission service's projection of promoter status and tier (from user.events):
a disabled upline forfeits or is compressed out at accrual."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update

from libs.common.db.engine import Tx
from libs.common.db.sql import insert_ignore
from services.commission.context import naive_utc
from services.commission.models import promoter_status


@dataclass(frozen=True)
class StatusChange:
    user_id: int
    status: str  # approved | disabled
    tier: str | None
    changed_at: datetime


async def apply_status_changes(tx: Tx, changes: Sequence[StatusChange]) -> None:
    """Record each promoter's latest status; an older change arriving late never overwrites
    a newer one."""
    conn = await tx.main()
    for change in changes:
        changed_at = naive_utc(change.changed_at)
        row = {
            "user_id": change.user_id,
            "status": change.status,
            "tier": change.tier,
            "changed_at": changed_at,
        }
        if await insert_ignore(conn, promoter_status, [row]):
            continue
        await conn.execute(
            update(promoter_status)
            .where(
                promoter_status.c.user_id == change.user_id,
                promoter_status.c.changed_at <= changed_at,
            )
            # An event without a tier (disable/enable) keeps the tier we know.
            .values(
                status=change.status,
                changed_at=changed_at,
                **({"tier": change.tier} if change.tier is not None else {}),
            )
        )
