"""Whole-team counts, applied asynchronously from ``user.bound`` / ``user.rebound`` /
``user.moved`` events along the path, a micro-batch at a time: the bind path costs the same
at depth 1 and depth 1,000, and a team size is one row read, never a subtree scan."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from libs.common import relation_path
from libs.common.db.engine import Tx
from libs.common.events import UserBound
from libs.common.messaging.consumer import PoisonMessage
from libs.common.messaging.envelope import Envelope
from services.user.moves import add_team_sizes

TEAM_EVENT_TYPES = frozenset({"user.bound", "user.rebound", "user.moved"})

Chain = str | tuple[int, ...]


def _chain(path: str | None, ids: list[int]) -> Chain:
    """One of an event's chains as it came: a compact path (version 2) or ids (version 1)."""
    return path if path is not None else tuple(ids)


async def apply_team_changes(tx: Tx, events: Sequence[Envelope]) -> None:
    """Each event adds the user to its new ancestors' teams and removes it from the old.

    Equal chains are summed before they are read: users bound under one parent carry the
    same path, so a batch of binds under a 1,000-deep promoter parses its path once and adds
    to each ancestor once, not a thousand dictionary updates per bind."""
    chains: Counter[Chain] = Counter()
    for event in events:
        try:
            data = UserBound.model_validate(event.data)
        except ValueError as exc:
            raise PoisonMessage(f"bad {event.type} data: {exc}") from exc
        chains[_chain(data.ancestor_path, data.ancestor_ids)] += 1
        chains[_chain(data.previous_ancestor_path, data.previous_ancestor_ids)] -= 1
    deltas: dict[int, int] = {}
    for chain, weight in chains.items():
        ids = relation_path.parse(chain) if isinstance(chain, str) else chain
        for ancestor in ids if weight else ():
            deltas[ancestor] = deltas.get(ancestor, 0) + weight
    await add_team_sizes(tx, deltas)
