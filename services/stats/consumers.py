"""Event handlers of the stats service: decode, call the same service functions as the API."""

from __future__ import annotations

from collections.abc import Sequence

from libs.common.diagnostics import probe_subscription
from libs.common.messaging.consumer import Subscription
from libs.common.runtime import Runtime


def subscriptions(runtime: Runtime) -> Sequence[Subscription]:
    return [probe_subscription()]
