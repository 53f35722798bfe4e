"""Every route × every kind of caller → the status the route-permission table promises.

The routes walked are the union of the merged OpenAPI document (what the services serve
now) and gateway/permissions.py (what the table opens), so a route a service adds later is
walked the day it appears: closed to everyone but admins until the table opens it.
"""

from __future__ import annotations

import re

import httpx
import pytest

from deploy.local.stack import Stack
from gateway.permissions import ADMIN_ONLY, PERMISSIONS, match, refusal
from libs.common.auth import Caller
from tests.gateway.conftest import bearer, token

SELF = "4242"
OTHER = "1"
_PARAM = re.compile(r"\{[^}]+\}")
_WRITES = {"post", "put", "delete", "patch"}


def _routes(stack: Stack, api: httpx.Client) -> set[tuple[str, str]]:
    document = api.get("/openapi.json").json()
    found = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    found |= {(rule.method, rule.template.replace(":path", "")) for rule in PERMISSIONS}
    return found


def _concrete(template: str, value: str) -> str:
    return _PARAM.sub(value, template)


def _callers(stack: Stack) -> dict[str, tuple[Caller, dict[str, str]]]:
    def as_caller(role: str, subject: str, platform: str | None = None) -> Caller:
        return Caller(
            subject=subject,
            roles=frozenset({role}),
            user_id=int(subject) if subject.isdigit() else None,
            platform=platform,
        )

    return {
        "promoter": (as_caller("promoter", SELF), bearer(token(stack, SELF, "promoter"))),
        "finance": (as_caller("finance", "77"), bearer(token(stack, "77", "finance"))),
        "platform": (
            as_caller("platform", "walk", "walk"),
            bearer(token(stack, "walk", "platform", platform="walk")),
        ),
    }


def test_every_route_refuses_anonymous_and_forged_callers(
    stack: Stack, api: httpx.Client, gateway: httpx.Client
) -> None:
    walked = 0
    for method, template in sorted(_routes(stack, api)):
        path = _concrete(template, OTHER)
        rule, _ = match(method, path)
        if rule.public:
            continue
        for headers in (
            {},
            bearer("forged"),
            bearer(token(stack, SELF, "promoter", secret="x" * 32)),
        ):
            response = gateway.request(method, path, headers=headers, json={})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.json()["error"]["code"].startswith("auth."), (method, path)
        walked += 1
    assert walked >= len([r for r in PERMISSIONS if not r.public])


@pytest.mark.parametrize("role", ["promoter", "finance", "platform"])
def test_every_route_gives_each_role_what_the_permission_table_says(
    stack: Stack, api: httpx.Client, gateway: httpx.Client, role: str
) -> None:
    caller, headers = _callers(stack)[role]
    refused_count = passed_count = 0
    for method, template in sorted(_routes(stack, api)):
        for value in (SELF, OTHER):
            path = _concrete(template, value)
            rule, params = match(method, path)
            if rule.public:
                continue
            expected_refusal = refusal(caller, rule, params, {}, b"")
            response = gateway.request(method, path, headers=headers, json={})
            where = (role, method, path, response.status_code, response.text[:200])
            assert response.status_code < 500, where
            if expected_refusal is not None:
                assert response.status_code == 403, where
                assert response.headers.get("X-Tuike-Refused-By") == "gateway", where
                assert response.json()["error"]["code"] == "auth.forbidden"
                refused_count += 1
            else:
                assert response.status_code not in (401, 429), where
                assert "X-Tuike-Refused-By" not in response.headers, where
                passed_count += 1
    assert refused_count > 0 and passed_count > 0


def test_admins_pass_the_gateway_on_every_route(stack: Stack, api: httpx.Client) -> None:
    for method, template in sorted(_routes(stack, api)):
        path = _concrete(template, OTHER)
        # Admin writes are walked as reads would change shared state of other tests.
        if method.lower() in _WRITES:
            continue
        response = api.request(method, path)
        assert response.status_code not in (401, 403, 429), (method, path, response.text)
        assert response.status_code < 500, (method, path, response.text)


# What the issue promises, written out by hand: (method, path, role) → refused by the gateway?
PROMISES = [
    ("GET", f"/api/v1/accounts/{SELF}", "promoter", False),
    ("GET", f"/api/v1/accounts/{OTHER}", "promoter", True),
    ("GET", f"/api/v1/relations/{SELF}/children", "promoter", False),
    ("GET", f"/api/v1/relations/{OTHER}/children", "promoter", True),
    ("GET", f"/api/v1/stats/promoters/{SELF}", "promoter", False),
    ("GET", f"/api/v1/stats/promoters/{OTHER}", "promoter", True),
    ("GET", f"/api/v1/commissions?beneficiary_id={OTHER}", "promoter", True),
    ("GET", f"/api/v1/withdrawals?promoter_id={OTHER}", "promoter", True),
    ("POST", f"/api/v1/withdrawals/{OTHER}/approve", "promoter", True),
    ("POST", f"/api/v1/withdrawals/{OTHER}/approve", "finance", False),
    ("GET", "/api/v1/tax/reports", "finance", False),
    ("GET", "/api/v1/tax/reports", "promoter", True),
    ("PUT", "/api/v1/settings/commission", "finance", True),
    ("POST", "/api/v1/users", "platform", False),
    ("POST", "/api/v1/orders", "platform", False),
    ("POST", "/api/v1/auth/tokens", "platform", False),
    ("GET", f"/api/v1/accounts/{OTHER}", "platform", True),
    ("GET", f"/api/v1/users/{OTHER}", "platform", True),
    ("POST", "/api/v1/commission/rules", "platform", True),
    ("GET", "/api/v1/audit/gateway", "finance", True),
    ("GET", "/api/v1/api-keys", "platform", True),
]


@pytest.mark.parametrize("method, path, role, refused", PROMISES)
def test_the_promises_of_the_issue(
    stack: Stack, gateway: httpx.Client, method: str, path: str, role: str, refused: bool
) -> None:
    _, headers = _callers(stack)[role]
    response = gateway.request(method, path, headers=headers, json={})
    assert response.status_code < 500
    if refused:
        assert response.status_code == 403, response.text
        assert response.headers.get("X-Tuike-Refused-By") == "gateway"
    else:
        assert "X-Tuike-Refused-By" not in response.headers, response.text
        assert response.status_code != 401


def test_unlisted_routes_are_admin_only() -> None:
    rule, _ = match("GET", "/api/v1/some/new/route")
    assert rule is ADMIN_ONLY
    promoter = Caller(subject=SELF, roles=frozenset({"promoter"}), user_id=int(SELF))
    assert refusal(promoter, rule, {}, {}, b"") is not None
    admin = Caller(subject="a", roles=frozenset({"admin"}))
    assert refusal(admin, rule, {}, {}, b"") is None
