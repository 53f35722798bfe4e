"""Every metric the alert rules and the dashboard name is exported by the running services
(scraped from /metrics of the real processes), and the core ones carry samples once traffic
has flowed."""

from __future__ import annotations

import time
from collections import defaultdict

import httpx
from prometheus_client.parser import text_string_to_metric_families

from deploy.local.stack import SERVICES, Stack
from tests.deploy.observability import (
    PROMETHEUS_SYNTHETIC,
    all_named_metrics,
    exported_series_names,
)


def scrape(url: str) -> tuple[set[str], dict[str, list[dict[str, str]]]]:
    """(series names the process exports, samples by series name) of one /metrics page."""
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    names: set[str] = set()
    samples: dict[str, list[dict[str, str]]] = defaultdict(list)
    for family in text_string_to_metric_families(response.text):
        names |= exported_series_names(family.name, family.type)
        for sample in family.samples:
            samples[sample.name].append(dict(sample.labels))
    return names, samples


def drive_traffic(stack: Stack, api: httpx.Client) -> None:
    """A probe event through the user service's outbox, the broker and every consumer, plus
    readiness checks (which set promoter_dependency_up)."""
    probe = api.post("/api/v1/diagnostics/user/probes").json()
    deadline = time.monotonic() + 30
    while True:
        counts = [
            api.get(f"/api/v1/diagnostics/{s}/probes/{probe['probe_id']}").json()["applied_count"]
            for s in SERVICES
        ]
        if all(count >= 1 for count in counts):
            break
        assert time.monotonic() < deadline, f"probe not applied everywhere: {counts}"
        time.sleep(0.2)
    for url in (stack.gateway_url, *(stack.service_url(s) for s in SERVICES)):
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200


def test_every_metric_named_by_rules_and_dashboard_is_exported(
    stack: Stack, api: httpx.Client
) -> None:
    drive_traffic(stack, api)
    exported_by: dict[str, set[str]] = defaultdict(set)
    for process, url in [
        ("gateway", stack.gateway_url),
        *((s, stack.service_url(s)) for s in SERVICES),
    ]:
        names, _ = scrape(url)
        for name in names:
            exported_by[name].add(process)
    named = all_named_metrics()
    assert len(named) >= 15
    missing = {
        name: where
        for name, where in named.items()
        if name not in exported_by and name not in PROMETHEUS_SYNTHETIC
    }
    assert not missing, f"named by rules/dashboard but exported by no process: {missing}"
    # The commission service is the one that sets the money metrics.
    for name in (
        "promoter_settlement_lag_seconds",
        "promoter_withdrawals_pending",
        "promoter_ledger_verify_failures_total",
        "promoter_commission_calculation_duration_seconds_bucket",
    ):
        assert "commission" in exported_by[name], name


def test_core_metrics_carry_samples_after_traffic(stack: Stack, api: httpx.Client) -> None:
    drive_traffic(stack, api)
    _, gateway = scrape(stack.gateway_url)
    # the gateway proxies every /api route through one handler: its template is /api/{rest:path}
    assert {
        "service": "gateway",
        "method": "POST",
        "path": "/api/{rest:path}",
        "status": "201",
    } in (gateway["promoter_api_request_count_total"])
    assert gateway["promoter_api_request_duration_seconds_bucket"]
    _, user = scrape(stack.service_url("user"))
    assert {
        "service": "user",
        "method": "POST",
        "path": "/api/v1/diagnostics/user/probes",
        "status": "201",
    } in user["promoter_api_request_count_total"]
    assert {"queue": "outbox:user"} in user["promoter_message_queue_size"]
    assert {"service": "user", "dependency": "database"} in user["promoter_dependency_up"]
    _, stats = scrape(stack.service_url("stats"))
    consumed = stats["promoter_messages_consumed_total"]
    assert any(s["outcome"] == "applied" for s in consumed), consumed
    # consumer lag is reported per topic and consumer (queue="<topic>:<consumer>")
    assert any(not s["queue"].startswith("outbox:") for s in stats["promoter_message_queue_size"])
