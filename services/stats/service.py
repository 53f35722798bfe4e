"""What every use case of the stats service shares: the Redis-side parts (cache, leaderboards),
business days, and the figures of one promoter and day."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from redis.asyncio import Redis

from libs.common.redis import Cache
from services.stats.models import FIGURES


@dataclass(frozen=True)
class StatsStores:
    """The Redis side of the stats service and the business timezone."""

    redis: Redis
    cache: Cache
    key_prefix: str  # runtime.key_prefix; leaderboards live under "{key_prefix}stats:lb:"
    zone: ZoneInfo

    @classmethod
    def of(cls, runtime: Any) -> StatsStores:
        return cls(runtime.redis, runtime.cache, runtime.key_prefix, runtime.settings.zone)

    def today(self) -> date:
        return datetime.now(self.zone).date()


def business_day(moment: datetime, zone: ZoneInfo) -> date:
    """The day of ``moment`` in the business timezone (a naive moment is UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(zone).date()


def days_between(first: date, last: date) -> list[date]:
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


@dataclass
class Figures:
    """One promoter's figures (a day, a period or a scope); amounts in minor units."""

    order_count: int = 0
    order_amount: int = 0
    commission_amount: int = 0
    settled_commission_amount: int = 0
    new_customers: int = 0

    def add(self, other: Figures | dict[str, int]) -> None:
        values = other if isinstance(other, dict) else other.as_dict()
        for name in FIGURES:
            setattr(self, name, getattr(self, name) + int(values.get(name) or 0))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in FIGURES}

    def is_zero(self) -> bool:
        return not any(self.as_dict().values())


@dataclass
class Deltas:
    """Changes to apply, summed per (promoter, day) so a batch touches each row once."""

    rows: dict[tuple[int, date], Figures] = field(default_factory=dict)

    def add(self, promoter_id: int, day: date, **changes: int) -> None:
        figures = self.rows.setdefault((promoter_id, day), Figures())
        figures.add(changes)

    def non_zero(self) -> dict[tuple[int, date], Figures]:
        return {key: f for key, f in self.rows.items() if not f.is_zero()}
