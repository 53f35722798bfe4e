"""`make load`: the locust mix runs headless against a deployment's gateway (here the test
stack), bounded, without failures, and prints requests/s, failures and percentiles per route."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from deploy.local.stack import SERVICES, Stack

ROOT = Path(__file__).resolve().parents[2]
CORE_ROUTES = (
    ("POST", "/api/v1/users"),
    ("POST", "/api/v1/promoters"),
    ("POST", "/api/v1/relations/bind"),
    ("POST", "/api/v1/orders"),
    ("POST", "/api/v1/orders/{order_id}/pay"),
)


def queue_sizes(stack: Stack) -> dict[str, float]:
    """promoter_message_queue_size of every service: outbox backlogs and consumer lags."""
    sizes = {}
    for service in SERVICES:
        text = httpx.get(f"{stack.service_url(service)}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            if family.name == "promoter_message_queue_size":
                for sample in family.samples:
                    sizes[f"{service}/{sample.labels['queue']}"] = sample.value
    return sizes


def wait_until_drained(stack: Stack, timeout: float = 120) -> None:
    """Every outbox published and every consumer caught up, on two scrapes in a row (an
    event consumed may publish the next one)."""
    deadline = time.monotonic() + timeout
    calm = 0
    while calm < 2:
        sizes = queue_sizes(stack)
        busy = {queue: size for queue, size in sizes.items() if size > 0}
        calm = calm + 1 if sizes and not busy else 0
        assert time.monotonic() < deadline, f"queues did not drain after the load: {busy}"
        time.sleep(0.5)


def test_make_load_is_headless_bounded_and_takes_the_host() -> None:
    result = subprocess.run(
        ["make", "-n", "load", "HOST=http://gateway.example:8000", "USERS=7", "DURATION=9s"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    command = " ".join(result.stdout.replace("\\\n", " ").split())
    assert "locust -f loadtest/locustfile.py --headless --host http://gateway.example:8000" in (
        command
    )
    assert "--users 7" in command and "--run-time 9s" in command


def test_load_mix_runs_against_the_stack_without_failures(stack: Stack) -> None:
    locust = Path(sys.executable).parent / "locust"
    result = subprocess.run(
        [
            str(locust),
            "-f",
            "loadtest/locustfile.py",
            "--headless",
            "--host",
            stack.gateway_url,
            "--users",
            "4",
            "--spawn-rate",
            "4",
            "--run-time",
            "8s",
            "--stop-timeout",
            "5",
            "--only-summary",
        ],
        env={**os.environ, "TUIKE_LOAD_TOKEN": stack.config.admin_key},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    output = result.stdout + result.stderr
    errors = output[output.find("Error report") :] if "Error report" in output else output
    assert result.returncode == 0, errors[:6000]
    summary = output[output.index("Tuike load summary") :]
    rows = {}
    for line in summary.splitlines():
        match = re.match(
            r"^(?P<method>\S*)\s+(?P<route>\S+)\s+(?P<reqs>\d+)\s+(?P<fails>\d+)\s+"
            r"(?P<rps>[\d.]+)\s+(?P<p50>\d+)\s+(?P<p95>\d+)\s+(?P<p99>\d+)$",
            line,
        )
        if match:
            rows[(match["method"], match["route"])] = match
    for route in CORE_ROUTES:
        assert route in rows, f"{route} missing from the summary:\n{summary}"
        assert int(rows[route]["reqs"]) > 0
        assert int(rows[route]["fails"]) == 0
    total = rows[("", "Aggregated")]
    assert int(total["fails"]) == 0 and float(total["rps"]) > 0
    assert int(total["p50"]) <= int(total["p95"]) <= int(total["p99"])
    # What the load wrote flows through: outboxes empty and consumers caught up (this also
    # leaves the shared stack quiet for the tests after this one).
    wait_until_drained(stack)
