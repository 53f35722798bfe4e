"""Prometheus metrics with the names operators already expect (ARCHITECTURE §10)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUEST_COUNT = Counter(
    "promoter_api_request_count",
    "HTTP requests served, by route template and status",
    ["service", "method", "path", "status"],
)
REQUEST_DURATION = Histogram(
    "promoter_api_request_duration_seconds",
    "HTTP request latency by route template",
    ["service", "method", "path"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
COMMISSION_CALCULATION_DURATION = Histogram(
    "promoter_commission_calculation_duration_seconds",
    "Time to compute and store the commissions of a batch of paid orders",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
MESSAGE_QUEUE_SIZE = Gauge(
    "promoter_message_queue_size",
    "Messages waiting: outbox backlog (queue=outbox:<service>) and consumer lag (queue=<topic>)",
    ["queue"],
)
MESSAGES_CONSUMED = Counter(
    "promoter_messages_consumed_total",
    "Messages handled by a consumer, by outcome (applied, duplicate, dead_lettered)",
    ["consumer", "topic", "outcome"],
)
MESSAGES_PUBLISHED = Counter(
    "promoter_messages_published_total", "Outbox rows published by the relay", ["service", "topic"]
)
OUTBOX_REPUBLISHED = Counter(
    "promoter_outbox_republished_total",
    "Outbox rows published again because the broker lost them (restart) or at relay start",
    ["service"],
)
DLQ_MESSAGES = Counter(
    "promoter_dlq_messages_total", "Messages sent to a dead-letter topic", ["consumer", "topic"]
)
DEPENDENCY_UP = Gauge(
    "promoter_dependency_up",
    "1 when the last readiness check of a dependency passed",
    ["service", "dependency"],
)
REDIS_FAILURES = Counter(
    "promoter_redis_failures_total", "Redis calls that failed, by use", ["use"]
)


def _template_of(scope: Scope, app: Any) -> str:
    """The route's path template (``/api/v1/users/{user_id}``), never the raw URL."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return str(route.path)
    for candidate in getattr(app, "routes", ()):
        match, _ = candidate.matches(scope)
        if match == Match.FULL and getattr(candidate, "path", None):
            return str(candidate.path)
    return "unmatched"


class _Measure:
    """Counts and times every HTTP request by route template and status. A pure ASGI
    middleware: Starlette's ``@app.middleware("http")`` wraps each request in extra tasks
    and streams, which costs more than the endpoints themselves on small reads."""

    def __init__(self, app: ASGIApp, service: str, router_app: Any) -> None:
        self.app, self.service, self.router_app = app, service, router_app
        # The labelled series per (method, template, status): looking a series up by its
        # labels costs more than counting, and there are only so many routes and statuses.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            key = (scope["method"], _template_of(scope, self.router_app), status)
            series = self._series.get(key)
            if series is None:
                method, path, _ = key
                series = self._series[key] = (
                    REQUEST_COUNT.labels(self.service, method, path, str(status)),
                    REQUEST_DURATION.labels(self.service, method, path),
                )
            series[0].inc()
            series[1].observe(time.perf_counter() - started)


def measured(app: ASGIApp, service: str, router_app: Any) -> ASGIApp:
    """``app`` behind the metrics middleware (for apps outside FastAPI's stack)."""
    return _Measure(app, service, router_app)


def install_metrics(app: FastAPI, service: str) -> None:
    app.add_middleware(_Measure, service=service, router_app=app.router)

    @app.get("/metrics", include_in_schema=False)
    async def _metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


# -- Settlement, withdrawals and ledger health (dashboard + alert rules in deploy/) -------------
# Declared here so every process exports them (possibly without samples) and the dashboard and
# alert rules can rely on the names. The commission service sets them; see docs/operations.md.
SETTLEMENT_LAG = Gauge(
    "promoter_settlement_lag_seconds",
    "Seconds since the oldest still-frozen commission record became due (unfreeze_at <= now); "
    "0 when nothing due is waiting. Set by the commission service's settlement scheduler on "
    "each pass (alert: settlement lag past frozen_days).",
)
SETTLED_RECORDS = Counter(
    "promoter_settled_records",
    "Commission records moved frozen -> settled, by path (scheduled = the commission_settle "
    "consumer, sync = the scheduler's synchronous fallback, manual = POST /settlements/run). "
    "Incremented by the commission service after the settling transaction commits.",
    ["path"],
)
SETTLED_AMOUNT = Counter(
    "promoter_settled_amount",
    "Commission amount settled, in minor units (fen), by currency. Incremented by the "
    "commission service together with promoter_settled_records.",
    ["currency"],
)
WITHDRAWALS_PENDING = Gauge(
    "promoter_withdrawals_pending",
    "Withdrawals waiting, by status: pending (awaiting audit), approved (awaiting payout), "
    "failed (payout to retry). Set by the commission service from its database (every replica "
    "reports the same count: aggregate with max, not sum).",
    ["status"],
)
WITHDRAWALS_PENDING_AMOUNT = Gauge(
    "promoter_withdrawals_pending_amount",
    "Gross amount (minor units) of the withdrawals counted by promoter_withdrawals_pending.",
    ["status"],
)
LEDGER_VERIFY_RUNS = Counter(
    "promoter_ledger_verify_runs",
    "Ledger verifications run (GET /api/v1/ledger/verify, the reconciliation CronJob), by "
    "outcome (ok | failed). Incremented by the commission service.",
    ["outcome"],
)
LEDGER_VERIFY_FAILURES = Counter(
    "promoter_ledger_verify_failures",
    "Problems found by ledger verification, by kind (e.g. chain_broken, row_missing, "
    "unbalanced). Incremented by the commission service, one per problem found.",
    ["kind"],
)
