"""Rate limits (token bucket in Redis, per caller and route, 429 + Retry-After, admins
exempt, fail open), request size limits and the circuit breaker per upstream."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx
from fastapi.testclient import TestClient

from deploy.local.stack import Stack, free_port
from gateway.breaker import CircuitBreaker
from tests.gateway.conftest import bearer, token

LocalGateway = Callable[..., TestClient]


def _metric(text: str, name: str, label: str) -> float:
    found = re.search(rf"^{name}\{{[^}}]*{label}[^}}]*\}} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_a_caller_over_its_rate_gets_429_with_retry_after(
    stack: Stack, local_gateway: LocalGateway
) -> None:
    # One token per 100 s: a slow, loaded machine cannot refill the bucket mid-test.
    client = local_gateway(rate_limit_per_second=0.01, rate_limit_burst=3)
    promoter = bearer(token(stack, "5151", "promoter"))
    statuses = [client.get("/api/v1/users/5151", headers=promoter).status_code for _ in range(3)]
    assert 429 not in statuses and 401 not in statuses
    refused = client.get("/api/v1/users/5151", headers=promoter)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["error"]["details"]["burst"] == 3

    # Another route of the same caller, and another caller, have their own buckets.
    assert client.get("/api/v1/relations/5151", headers=promoter).status_code != 429
    other = bearer(token(stack, "5152", "promoter"))
    assert client.get("/api/v1/users/5152", headers=other).status_code != 429
    # Admins are exempt by default.
    admin = bearer(stack.config.admin_key)
    assert all(client.get("/api/v1/users/5151", headers=admin).status_code != 429 for _ in range(6))


def test_the_bucket_refills_over_time(stack: Stack, local_gateway: LocalGateway) -> None:
    client = local_gateway(rate_limit_per_second=0.25, rate_limit_burst=1)
    promoter = bearer(token(stack, "5153", "promoter"))
    assert client.get("/api/v1/users/5153", headers=promoter).status_code != 429
    refused = client.get("/api/v1/users/5153", headers=promoter)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 4
    time.sleep(4.2)
    assert client.get("/api/v1/users/5153", headers=promoter).status_code != 429


def test_rate_limits_fail_open_with_a_metric_when_redis_is_down(
    stack: Stack, local_gateway: LocalGateway
) -> None:
    client = local_gateway(redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_burst=1)
    before = _metric(
        client.get("/metrics").text, "promoter_redis_failures_total", 'use="rate_limit"'
    )
    promoter = bearer(token(stack, "5154", "promoter"))
    for _ in range(3):
        response = client.get("/api/v1/users/5154", headers=promoter)
        assert response.status_code not in (429, 500, 503), response.text
    after = _metric(
        client.get("/metrics").text, "promoter_redis_failures_total", 'use="rate_limit"'
    )
    assert after >= before + 3


def test_a_body_over_the_size_limit_is_a_413_after_authentication(
    stack: Stack, api: httpx.Client, gateway: httpx.Client
) -> None:
    big = b"{" + b" " * 1_100_000 + b"}"
    headers = {"Content-Type": "application/json"}
    response = api.post("/api/v1/users", content=big, headers=headers)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request.too_large"
    anonymous = gateway.post("/api/v1/users", content=big, headers=headers)
    assert anonymous.status_code == 401


def test_the_circuit_opens_after_failures_in_a_row_and_tries_again_later(
    stack: Stack, local_gateway: LocalGateway
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    client = local_gateway(
        order_service_url=dead, breaker_failure_threshold=2, breaker_open_seconds=0.5
    )
    admin = bearer(stack.config.admin_key)
    for _ in range(2):
        failed = client.get("/api/v1/orders/1", headers=admin)
        assert failed.status_code == 503
        assert failed.json()["error"]["details"] == {"service": "order"}
    started = time.monotonic()
    refused = client.get("/api/v1/orders/1", headers=admin)
    assert time.monotonic() - started < 0.5
    assert refused.status_code == 503
    assert refused.json()["error"]["details"] == {"service": "order", "reason": "circuit_open"}
    assert int(refused.headers["Retry-After"]) >= 1
    # Other upstreams are not affected.
    assert client.get("/api/v1/users/1", headers=admin).status_code == 404
    time.sleep(0.6)
    trial = client.get("/api/v1/orders/1", headers=admin)  # half-open: one trial goes through
    assert trial.json()["error"]["details"] == {"service": "order"}
    again = client.get("/api/v1/orders/1", headers=admin)  # the trial failed: open again
    assert again.json()["error"]["details"]["reason"] == "circuit_open"


def test_a_successful_trial_closes_the_breaker() -> None:
    breaker = CircuitBreaker("user", failure_threshold=2, open_seconds=0.05)
    breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    time.sleep(0.06)
    assert breaker.allow()  # the one trial
    assert not breaker.allow()  # no second trial while the first is out
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()
