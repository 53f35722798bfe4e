"""Whole-team counts, applied asynchronously from ``user.bound`` / ``user.rebound`` /
``user.moved`` events along the path, a micro-batch at a time: the bind path costs the same
at depth 1 and depth 1,000, and a team size is one row read, never a subtree scan."""

from __future__ import annotations

from collections.abc import Sequence

from libs.common.db.engine import Tx
from libs.common.events import UserBound
from libs.common.messaging.consumer import PoisonMessage
from libs.common.messaging.envelope import Envelope
from services.user.moves import add_team_sizes

TEAM_EVENT_TYPES = frozenset({"user.bound", "user.rebound", "user.moved"})


async def apply_team_changes(tx: Tx, events: Sequence[Envelope]) -> None:
    """Each event adds the user to its new ancestors' teams and removes it from the old."""
    deltas: dict[int, int] = {}
    for event in events:
        try:
            data = UserBound.model_validate(event.data)
        except ValueError as exc:
            raise PoisonMessage(f"bad {event.type} data: {exc}") from exc
        for ancestor in data.ancestors():
            deltas[ancestor] = deltas.get(ancestor, 0) + 1
        for ancestor in data.previous_ancestors():
            deltas[ancestor] = deltas.get(ancestor, 0) - 1
    await add_team_sizes(tx, deltas)
