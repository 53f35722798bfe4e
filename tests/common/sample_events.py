"""Events for the messaging tests: unique ids, keyed by ``n``."""

from __future__ import annotations

import secrets

from libs.common.messaging.envelope import Envelope, make_event


def sample_event(n: int, **data: object) -> Envelope:
    """A ``test.happened`` event with a fresh id, key ``n`` and data ``{"n": n, **data}``."""
    return make_event(
        "test.happened",
        f"{secrets.token_hex(4)}-{n}",
        key=str(n),
        data={"n": n, **data},
        source="test",
    )
