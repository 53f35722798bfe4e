"""What the commission use cases need besides the transaction: ids and the monthly tables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

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

    # How often the settlement leader looks for due orders, and how many per batch.
    settle_interval_seconds: float = 2.0
    settle_batch_size: int = 500
    # An order handed to commission_settle but still unsettled after this is handed again.
    settle_requeue_seconds: float = 60.0
