"""The route-permission table: which roles may call which route at the gateway.

Admins may call every route. A route missing from this table is admin-only, so a route a
service adds later is closed until someone opens it here (and the route-walk test, which
reads this table, covers it at once). The services check again with ``Caller.require`` /
``require_self_or`` (defence in depth); the gateway also enforces what it can see:

- ``promoter_self``: where a promoter's own id sits (``path:<name>``, ``query:<name>`` or
  ``body:<name>``); a promoter naming another user's id is refused here. A query or body
  field that is absent is left to the service (which then scopes to the caller).
- ``platform_field``: where the platform is named (``path:<name>`` or ``body:<name>``); a
  platform key may only act for its own platform.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from libs.common.auth import FINANCE, PLATFORM, PROMOTER, Caller

_PARAM = re.compile(r"\{([a-z_]+)(:path)?\}")


@dataclass(frozen=True)
class Rule:
    method: str
    template: str
    roles: frozenset[str] = frozenset()
    promoter_self: str | None = None
    platform_field: str | None = None
    public: bool = False
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def group(match: re.Match[str]) -> str:
            body = ".+" if match.group(2) else "[^/]+"
            return f"(?P<{match.group(1)}>{body})"

        regex = (
            "^"
            + _PARAM.sub(group, re.escape(self.template).replace(r"\{", "{").replace(r"\}", "}"))
            + "/?$"
        )
        object.__setattr__(self, "pattern", re.compile(regex))

    @property
    def name(self) -> str:
        return f"{self.method} {self.template}"


def _rule(
    method: str,
    template: str,
    *roles: str,
    promoter_self: str | None = None,
    platform_field: str | None = None,
    public: bool = False,
) -> Rule:
    return Rule(method, template, frozenset(roles), promoter_self, platform_field, public)


P, F, PL = PROMOTER, FINANCE, PLATFORM
V1 = "/api/v1"

PERMISSIONS: list[Rule] = [
    # Public: they check their own signatures or serve public images (ARCHITECTURE §9).
    _rule("GET", "/s/{code:path}", public=True),
    _rule("POST", f"{V1}/webhooks/{{rest:path}}", public=True),
    _rule("GET", f"{V1}/share/qrcode", public=True),
    _rule("GET", f"{V1}/share/poster", public=True),
    # The gateway's own routes.
    _rule("POST", f"{V1}/auth/tokens", PL),
    # Users and promoters.
    _rule("POST", f"{V1}/users", PL, platform_field="body:platform"),
    _rule("GET", f"{V1}/users/{{user_id}}", P, promoter_self="path:user_id"),
    # Lookup by phone: the user service scopes a platform to its own users.
    _rule("GET", f"{V1}/users", PL),
    _rule("POST", f"{V1}/promoters", P, promoter_self="body:user_id"),
    _rule("GET", f"{V1}/promoters/by-code/{{code}}", P),
    _rule("GET", f"{V1}/promoters/{{user_id}}", P, promoter_self="path:user_id"),
    _rule("GET", f"{V1}/promoters/{{user_id}}/payee", P, F, promoter_self="path:user_id"),
    _rule("PUT", f"{V1}/promoters/{{user_id}}/payee", P, promoter_self="path:user_id"),
    # Relations: a platform binds its users at sign-up; a promoter reads its own tree.
    _rule("POST", f"{V1}/relations/bind", PL, P, promoter_self="body:user_id"),
    _rule("GET", f"{V1}/relations/{{user_id}}", P, promoter_self="path:user_id"),
    _rule("GET", f"{V1}/relations/{{user_id}}/ancestors", P, promoter_self="path:user_id"),
    _rule("GET", f"{V1}/relations/{{user_id}}/children", P, promoter_self="path:user_id"),
    _rule("GET", f"{V1}/relations/{{user_id}}/team", P, promoter_self="path:user_id"),
    _rule("GET", f"{V1}/relations/{{user_id}}/history", P, promoter_self="path:user_id"),
    _rule("POST", f"{V1}/share-links", P, promoter_self="body:promoter_id"),
    _rule("GET", f"{V1}/share/wechat-config", P),
    # Orders: platforms send them and drive their lifecycle.
    _rule("POST", f"{V1}/orders", PL, platform_field="body:platform"),
    _rule("POST", f"{V1}/orders/{{order_id}}/pay", PL),
    _rule("POST", f"{V1}/orders/{{order_id}}/complete", PL),
    _rule("POST", f"{V1}/orders/{{order_id}}/close", PL),
    _rule("POST", f"{V1}/orders/{{order_id}}/refunds", PL),
    _rule(
        "POST",
        f"{V1}/orders/by-number/{{platform}}/{{order_no}}/pay",
        PL,
        platform_field="path:platform",
    ),
    _rule(
        "POST",
        f"{V1}/orders/by-number/{{platform}}/{{order_no}}/complete",
        PL,
        platform_field="path:platform",
    ),
    _rule(
        "POST",
        f"{V1}/orders/by-number/{{platform}}/{{order_no}}/close",
        PL,
        platform_field="path:platform",
    ),
    _rule(
        "POST",
        f"{V1}/orders/by-number/{{platform}}/{{order_no}}/refunds",
        PL,
        platform_field="path:platform",
    ),
    # Commissions, balances, withdrawals: promoters see their own; finance audits.
    _rule("GET", f"{V1}/orders/{{order_id}}/commissions", P, F),
    _rule("GET", f"{V1}/commissions", P, F, promoter_self="query:beneficiary_id"),
    _rule("GET", f"{V1}/accounts/{{promoter_id}}", P, F, promoter_self="path:promoter_id"),
    _rule(
        "GET",
        f"{V1}/accounts/{{promoter_id}}/statement",
        P,
        F,
        promoter_self="path:promoter_id",
    ),
    _rule("POST", f"{V1}/withdrawals", P, promoter_self="body:promoter_id"),
    _rule("GET", f"{V1}/withdrawals", P, F, promoter_self="query:promoter_id"),
    _rule("GET", f"{V1}/withdrawals/transfer-file", F),
    _rule("GET", f"{V1}/withdrawals/{{withdrawal_id}}", P, F),
    _rule("POST", f"{V1}/withdrawals/{{withdrawal_id}}/payout", F),
    _rule("POST", f"{V1}/withdrawals/{{withdrawal_id}}/mark-paid", F),
    _rule("POST", f"{V1}/withdrawals/{{withdrawal_id}}/mark-failed", F),
    _rule("POST", f"{V1}/withdrawals/{{withdrawal_id}}/approve", F),
    _rule("POST", f"{V1}/withdrawals/{{withdrawal_id}}/reject", F),
    _rule("POST", f"{V1}/withdrawals/{{withdrawal_id}}/cancel", P),
    _rule("GET", f"{V1}/tax/{{rest:path}}", F),
    _rule("GET", f"{V1}/tax", F),
    # Stats: a promoter's own figures and the leaderboards.
    _rule("GET", f"{V1}/stats/promoters/{{promoter_id}}", P, promoter_self="path:promoter_id"),
    _rule(
        "GET",
        f"{V1}/stats/promoters/{{promoter_id}}/{{rest:path}}",
        P,
        promoter_self="path:promoter_id",
    ),
    _rule("GET", f"{V1}/stats/leaderboard", P),
    _rule("GET", f"{V1}/stats/leaderboard/{{rest:path}}", P),
]

ADMIN_ONLY = Rule("*", "(unlisted: admin only)")


def match(method: str, path: str) -> tuple[Rule, dict[str, str]]:
    """The rule for this request and its path parameters (unlisted routes: admin only)."""
    for rule in PERMISSIONS:
        if rule.method != method.upper():
            continue
        found = rule.pattern.match(path)
        if found:
            return rule, found.groupdict()
    return ADMIN_ONLY, {}


def allowed_roles(rule: Rule) -> frozenset[str]:
    return rule.roles


def _body_field(body: bytes, name: str) -> Any:
    if not body:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # the service answers a malformed body with a 422
    return parsed.get(name) if isinstance(parsed, dict) else None


def refusal(
    caller: Caller,
    rule: Rule,
    params: dict[str, str],
    query: dict[str, str],
    body: bytes,
) -> str | None:
    """Why the gateway refuses this caller (a message), or None when it may pass."""
    if caller.is_admin or rule.public:
        return None
    matching = caller.roles & rule.roles
    if not matching:
        return "this role may not call this route"
    if PLATFORM in matching and rule.platform_field and caller.platform:
        where, _, name = rule.platform_field.partition(":")
        named = params.get(name) if where == "path" else _body_field(body, name)
        if named is not None and str(named) != caller.platform:
            return "a platform key may only act for its own platform"
    if matching - {PROMOTER} or rule.promoter_self is None:
        return None
    where, _, name = rule.promoter_self.partition(":")
    if where == "path":
        value: Any = params.get(name)
    elif where == "query":
        value = query.get(name)
    else:
        value = _body_field(body, name)
    if value is None or value == "":
        return None if where != "path" else "a promoter may only read its own data"
    if caller.user_id is None or str(value).strip() != str(caller.user_id):
        return "a promoter may only see and change its own data"
    return None
