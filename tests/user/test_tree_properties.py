"""Property: random binds, rebinds and moves (with move jobs interrupted between batches)
never create a cycle, and every user's path always equals the walk up ``parent_id``; once
the jobs are through, the stored paths, levels and roots equal it too, and the team counts
(levels 1-3 and, after the events are applied, the whole team) equal counts of the tree."""

from __future__ import annotations

import secrets
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from libs.common.db.engine import Tx
from libs.common.errors import TuikeError
from libs.common.messaging.envelope import Envelope
from libs.common.messaging.outbox import ROW, outbox, utcnow, whole_rows
from services.user import paths, relations
from services.user.moves import run_move_batch
from services.user.team import TEAM_EVENT_TYPES, apply_team_changes
from tests.user.conftest import UserWorld

SIZE = 7
operation = st.one_of(
    st.tuples(st.just("bind"), st.integers(0, SIZE - 1), st.integers(0, SIZE - 1)),
    st.tuples(st.just("move"), st.integers(0, SIZE - 1), st.integers(0, SIZE - 1)),
    st.tuples(st.just("batch"), st.just(0), st.just(0)),
)


def _walk_up(parents: dict[int, int], user_id: int) -> list[int]:
    chain = [user_id]
    while chain[-1] in parents:
        chain.append(parents[chain[-1]])
        assert len(chain) <= SIZE + 1, "cycle in the model"
    chain.reverse()
    return chain


async def _check_paths(world: UserWorld, people: list[int], parents: dict[int, int]) -> None:
    for user_id in people:
        _, path = await relations.read_path(world.db, user_id)
        assert paths.ids_of(path) == _walk_up(parents, user_id)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=st.lists(operation, min_size=1, max_size=14))
async def test_random_binds_and_moves_keep_the_tree_sound(
    world: UserWorld, operations: list[tuple[str, int, int]]
) -> None:
    await world.configure(bind_mode="override")
    # Fresh users per example: the database is shared by the examples of one test.
    tag = secrets.token_hex(4)
    people_codes = [await world.promoter(f"{tag}-{n}") for n in range(SIZE)]
    people = [p for p, _ in people_codes]
    parents: dict[int, int] = {}
    for kind, a, b in operations:
        user_id, parent_id = people[a], people[b]
        would_cycle = user_id in _walk_up(parents, parent_id)
        try:
            if kind == "bind":
                await world.bind(user_id, people_codes[b][1])
            elif kind == "move":
                await world.move(user_id, parent_id)
            else:
                await run_move_batch(world.db, batch_size=1)
        except TuikeError as refusal:
            assert would_cycle and refusal.code in {"relation.cycle", "relation.self_bind"}
        else:
            if kind != "batch":
                assert not would_cycle
                parents[user_id] = parent_id
        await _check_paths(world, people, parents)

    await world.finish_moves()
    now = utcnow()
    for user_id in people:
        chain = _walk_up(parents, user_id)
        relation = await relations.get_relation(world.db, user_id, now)
        assert (relation["root_id"], relation["level"]) == (chain[0], len(chain))
        assert relation["path"] == "," + "".join(f"{i}," for i in chain)
        async with world.db.read(may_lag=False) as conn:
            stored = await relations.load_relation(conn, user_id)
        if stored is not None:
            assert paths.ids_of(stored["path"]) == chain
            assert (stored["root_id"], stored["level"]) == (chain[0], len(chain))

    await _apply_team_events(world, people)
    for user_id in people:
        depths = [
            len(_walk_up(parents, other)) - len(_walk_up(parents, user_id))
            for other in people
            if user_id in _walk_up(parents, other)[:-1]
        ]
        team = await relations.get_team(world.db, user_id)
        expected = [sum(1 for d in depths if d == level) for level in (1, 2, 3)]
        assert [team["level1_count"], team["level2_count"], team["level3_count"]] == expected
        assert team["team_size"] == len(depths)


async def _apply_team_events(world: UserWorld, people: list[int]) -> None:
    """What the team-counts consumer does with these users' events."""
    wanted = {str(p) for p in people}
    async with world.db.read(may_lag=False) as conn:
        rows = await conn.execute(
            select(*ROW).where(outbox.c.event_key.in_(wanted)).order_by(outbox.c.seq)
        )
        published = await whole_rows(conn, rows.all())
    events = [Envelope.model_validate_json(payload) for *_, payload in published]
    mine: list[Any] = [e for e in events if e.type in TEAM_EVENT_TYPES]

    async def work(tx: Tx) -> None:
        await apply_team_changes(tx, mine)

    await world.run(work)
