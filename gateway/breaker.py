"""A small circuit breaker per upstream service.

Closed: requests pass; ``failure_threshold`` transport failures or timeouts in a row open
it. Open: requests are refused at once (503) for ``open_seconds``, so a dead service costs
callers nothing and gets room to recover. Then half-open: one trial request passes; its
success closes the breaker, its failure opens it again. HTTP answers of any status count as
success: a 4xx or 5xx is the service speaking, not the service gone.
"""

from __future__ import annotations

import time

from prometheus_client import Gauge

BREAKER_OPEN = Gauge(
    "promoter_gateway_circuit_open",
    "1 while the gateway's circuit breaker for an upstream is open",
    ["upstream"],
)


class CircuitBreaker:
    def __init__(self, name: str, failure_threshold: int, open_seconds: float) -> None:
        self.name = name
        self.failure_threshold = max(1, failure_threshold)
        self.open_seconds = open_seconds
        self.failures = 0
        self.opened_at: float | None = None
        self.trial_started_at: float | None = None

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if time.monotonic() - self.opened_at >= self.open_seconds:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a request go to the upstream now?"""
        state = self.state
        if state == "closed":
            return True
        now = time.monotonic()
        # One trial at a time; a trial that never reported back (its caller went away)
        # does not block the next one for longer than the open period.
        if state == "half_open" and (
            self.trial_started_at is None or now - self.trial_started_at >= self.open_seconds
        ):
            self.trial_started_at = now
            return True
        return False

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.trial_started_at = None
        BREAKER_OPEN.labels(self.name).set(0)

    def record_failure(self) -> None:
        self.failures += 1
        self.trial_started_at = None
        if self.opened_at is not None or self.failures >= self.failure_threshold:
            self.opened_at = time.monotonic()
            BREAKER_OPEN.labels(self.name).set(1)

    def retry_after_seconds(self) -> int:
        if self.opened_at is None:
            return 0
        remaining = self.open_seconds - (time.monotonic() - self.opened_at)
        return max(1, int(remaining + 0.999))
