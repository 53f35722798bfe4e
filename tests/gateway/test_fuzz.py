"""Schemathesis against the merged OpenAPI document, through the gateway: generated requests
(bounded examples per operation) never get a 5xx, and every error is the envelope.

Operations whose success would change what other end-to-end tests of the shared stack rely
on (business settings, commission rules, settlement runs, diagnostics, admin moves) are left
out; everything else is fuzzed as an admin (the widest reach) and as a promoter.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from deploy.local.stack import Stack
from tests.gateway.conftest import bearer, token

MAX_EXAMPLES = 3
_SHARED_STATE = re.compile(
    r"^/api/v1/(settings/|diagnostics/|commission/rules|settlements|relations/[^/]+/parent)"
)


def _check(response: Any, where: str) -> None:
    assert response.status_code < 500, f"{where}: {response.status_code} {response.content[:300]!r}"
    if response.status_code >= 400:
        body = orjson.loads(response.content)
        error = body.get("error") if isinstance(body, dict) else None
        assert isinstance(error, dict), f"{where}: not the envelope: {body}"
        assert isinstance(error.get("code"), str) and isinstance(error.get("message"), str)


def _fuzz(operation: Any, base_url: str, headers: dict[str, str], where: str) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        _check(case.call(base_url=base_url, headers=headers, timeout=30), where)

    run()


@pytest.mark.parametrize("role", ["admin", "promoter"])
def test_fuzzing_the_merged_document_finds_no_5xx_and_only_envelopes(
    stack: Stack, api: httpx.Client, role: str
) -> None:
    document = api.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(document)
    headers = (
        bearer(stack.config.admin_key)
        if role == "admin"
        else bearer(token(stack, "4242", "promoter"))
    )
    fuzzed = 0
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() != "GET" and _SHARED_STATE.match(operation.path):
            continue
        where = f"{operation.method.upper()} {operation.path} as {role}"
        try:
            _fuzz(operation, stack.gateway_url, headers, where)
        except AssertionError as exc:  # keep going: one report names every failing route
            failures.append(str(exc).splitlines()[0])
        fuzzed += 1
    assert fuzzed >= 30
    assert failures == [], "\n".join(failures)
