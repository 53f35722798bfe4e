"""The suite as separate processes: readiness, routing, errors, request ids."""

from __future__ import annotations

import time

import httpx

from deploy.local.stack import Stack


def test_gateway_is_ready_with_every_dependency(stack: Stack) -> None:
    response = httpx.get(f"{stack.gateway_url}/readyz", timeout=10)
    assert response.status_code == 200
    assert response.json()["checks"] == {
        "redis": "ok",
        "user": "ok",
        "order": "ok",
        "commission": "ok",
        "stats": "ok",
    }
    for service in ("user", "order", "commission", "stats"):
        ready = httpx.get(f"{stack.service_url(service)}/readyz", timeout=10).json()
        # Each runs its workers here, so it is ready once its consumers are in their groups.
        assert ready["checks"] == {
            "database": "ok",
            "redis": "ok",
            "broker": "ok",
            "consumers": "ok",
        }


def test_anonymous_and_forged_callers_get_401(stack: Stack) -> None:
    for headers in ({}, {"Authorization": "Bearer forged"}, {"Authorization": "Basic abc"}):
        response = httpx.post(
            f"{stack.gateway_url}/api/v1/diagnostics/user/probes", headers=headers, timeout=10
        )
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "auth.unauthenticated"


def test_unknown_route_is_a_404_in_the_envelope(api: httpx.Client) -> None:
    response = api.get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.json() == {
        "error": {"code": "not_found", "message": "no route /api/v1/no-such-thing", "details": {}}
    }


def test_request_id_is_propagated_to_the_service(stack: Stack, api: httpx.Client) -> None:
    response = api.post("/api/v1/diagnostics/order/probes", headers={"X-Request-ID": "req-e2e-42"})
    assert response.status_code == 201
    assert response.headers["X-Request-ID"] == "req-e2e-42"
    generated = api.get("/api/v1/no-such-thing").headers["X-Request-ID"]
    assert len(generated) == 32


def test_metrics_use_route_templates(stack: Stack, api: httpx.Client) -> None:
    api.get("/api/v1/diagnostics/stats/probes/abc123")
    metrics = httpx.get(f"{stack.service_url('stats')}/metrics", timeout=10).text
    assert 'path="/api/v1/diagnostics/stats/probes/{probe_id}"' in metrics
    assert "abc123" not in metrics
    assert "promoter_message_queue_size" in metrics
    assert "promoter_commission_calculation_duration_seconds" in metrics


def test_a_service_that_is_down_is_a_503_not_a_hang(stack: Stack, api: httpx.Client) -> None:
    stack.kill("order")
    try:
        started = time.monotonic()
        response = api.post("/api/v1/diagnostics/order/probes")
        assert time.monotonic() - started < 5
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "upstream.unavailable"
        assert response.json()["error"]["details"] == {"service": "order"}
        assert httpx.get(f"{stack.gateway_url}/readyz", timeout=10).status_code == 503
    finally:
        stack.restart_service("order")
    assert api.post("/api/v1/diagnostics/order/probes").status_code == 201
