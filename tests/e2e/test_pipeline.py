"""An event written with an outbox row in one service arrives exactly once in every other
service's consumer through the real broker: also when it is published twice, and when a
consumer is killed after its database commit but before its offset commit."""

from __future__ import annotations

import time

import httpx

from deploy.local.stack import SERVICES, Stack


def _applied(api: httpx.Client, service: str, probe_id: str) -> int:
    response = api.get(f"/api/v1/diagnostics/{service}/probes/{probe_id}")
    assert response.status_code == 200
    return int(response.json()["applied_count"])


def _wait_all_once(
    api: httpx.Client, probe_id: str, services=SERVICES, timeout: float = 30
) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        counts = {s: _applied(api, s, probe_id) for s in services}
        if all(c == 1 for c in counts.values()):
            return
        assert all(c <= 1 for c in counts.values()), f"a duplicate got through: {counts}"
        assert time.monotonic() < deadline, f"not applied everywhere: {counts}"
        time.sleep(0.2)


def test_event_arrives_exactly_once_everywhere(api: httpx.Client) -> None:
    probe = api.post("/api/v1/diagnostics/user/probes").json()
    _wait_all_once(api, probe["probe_id"])


def test_publishing_the_same_event_twice_changes_nothing(api: httpx.Client) -> None:
    probe = api.post("/api/v1/diagnostics/order/probes").json()
    _wait_all_once(api, probe["probe_id"])
    for _ in range(2):
        response = api.post(f"/api/v1/diagnostics/order/outbox/{probe['event_id']}/republish")
        assert response.status_code == 202
    # A probe sent after the republish arrives after it (same relay, same order): once it is
    # applied everywhere, the duplicates have been seen too.
    marker = api.post("/api/v1/diagnostics/order/probes").json()
    _wait_all_once(api, marker["probe_id"])
    assert {s: _applied(api, s, probe["probe_id"]) for s in SERVICES} == {s: 1 for s in SERVICES}


def test_consumer_killed_between_db_commit_and_offset_commit(
    stack: Stack, api: httpx.Client
) -> None:
    stats = stack.processes["stats"]
    probe = api.post(
        "/api/v1/diagnostics/user/probes", json={"crash_at": "consumer.after_db_commit"}
    ).json()
    # Every consumer honours the crash request: all four services die right after committing
    # the probe's effects and before committing the offset.
    stats.wait(timeout=30)
    assert stats.returncode == -9
    for service in SERVICES:
        assert stack.processes[service].wait(timeout=30) == -9
    for service in SERVICES:
        stack.start_service(service)
    stack.wait_ready(60)
    # Redelivered after the restart; the inbox absorbs it: still exactly once.
    marker = api.post("/api/v1/diagnostics/user/probes").json()
    _wait_all_once(api, marker["probe_id"], timeout=60)
    assert {s: _applied(api, s, probe["probe_id"]) for s in SERVICES} == {s: 1 for s in SERVICES}
