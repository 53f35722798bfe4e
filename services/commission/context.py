"""What the commission use cases need besides the transaction: ids and the monthly tables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import Field

from libs.common.ids import IdGenerator
from libs.common.settings import ServiceSettings
from services.commission.models import CommissionTables


@dataclass(frozen=True)
class CommissionContext:
    ids: IdGenerator
    tables: CommissionTables


def naive_utc(moment: datetime | None) -> datetime | None:
    """DATETIME columns hold naive UTC; events carry aware datetimes."""
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class CommissionServiceSettings(ServiceSettings):
    """Deploy-time settings of the commission service (env ``TUIKE_…``)."""

    # How often the settlement leader looks for due orders, and how many orders per batch (a
    # batch is one transaction with one ledger transfer per promoter: 2,000 orders settle
    # twice as fast per record as 500, for a write held ~0.2 s; decision 0304).
    settle_interval_seconds: float = 2.0
    settle_batch_size: int = Field(default=2000, ge=1, le=20_000)
    # An order handed to commission_settle but still unsettled after this is handed again.
    settle_requeue_seconds: float = 60.0
