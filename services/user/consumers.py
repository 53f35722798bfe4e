"""Event handlers of the user service: decode, call the same service functions as the API."""

from __future__ import annotations

from collections.abc import Sequence

from libs.common.diagnostics import probe_subscription
from libs.common.messaging.consumer import Subscription
from libs.common.messaging.envelope import USER_EVENTS
from libs.common.runtime import Runtime
from services.user.team import TEAM_EVENT_TYPES, apply_team_changes


def subscriptions(runtime: Runtime) -> Sequence[Subscription]:
    return [
        probe_subscription(),
        # Our own user.events: whole-team counts follow binds, rebinds and moves.
        Subscription(
            name="team-counts",
            topics=[USER_EVENTS],
            handler=apply_team_changes,
            event_types=TEAM_EVENT_TYPES,
        ),
    ]
