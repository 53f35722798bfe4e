"""The route table: which service serves a public path.

More specific patterns come first (``/api/v1/orders/{id}/commissions`` belongs to the
commission service although ``/api/v1/orders`` belongs to the order service).
"""

from __future__ import annotations

import re

ROUTE_TABLE: list[tuple[str, str]] = [
    # Payee details live where payouts happen (docs/decisions/0700-payee-in-commission.md).
    (r"^/api/v1/promoters/[^/]+/payee/?$", "commission"),
    (r"^/api/v1/orders/[^/]+/commissions/?$", "commission"),
    (r"^/api/v1/orders(/|$)", "order"),
    (r"^/api/v1/webhooks(/|$)", "order"),
    (r"^/api/v1/(users|promoters|relations|share-links|share)(/|$)", "user"),
    (
        r"^/api/v1/(commission|commissions|accounts|settlements|withdrawals|ledger|tax)(/|$)",
        "commission",
    ),
    (r"^/api/v1/stats(/|$)", "stats"),
    (r"^/api/v1/settings/(user|order|commission|stats)/?$", r"\1"),
    (r"^/api/v1/diagnostics/(user|order|commission|stats)(/|$)", r"\1"),
    (r"^/api/v1/audit/(user|order|commission|stats)/?$", r"\1"),
    (r"^/s/", "user"),
]

_COMPILED = [(re.compile(pattern), target) for pattern, target in ROUTE_TABLE]

# Reachable without credentials; these check their own signatures or serve public images.
PUBLIC_PREFIXES = ("/s/", "/api/v1/webhooks/", "/api/v1/share/qrcode", "/api/v1/share/poster")


def resolve(path: str) -> str | None:
    """The service that serves ``path``, or None (an unknown route: 404)."""
    for pattern, target in _COMPILED:
        match = pattern.match(path)
        if match:
            return match.expand(target) if "\\" in target else target
    return None


def is_public(path: str) -> bool:
    return path.startswith(PUBLIC_PREFIXES)
