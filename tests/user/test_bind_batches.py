"""Binds in batches (group commit): a batch gives every request the outcome it would get
alone, in order, and two queues on one database (two processes) never both win a user."""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from libs.common.db.engine import Database, Tx
from libs.common.errors import TuikeError
from libs.common.events import UserBound
from services.user import paths
from services.user.attaching import Attached, event_data, plan_attach
from services.user.bind_batch import BindQueue, BindRequest, Outcome, bind_many
from services.user.models import relations, team_counts
from tests.user.conftest import UserWorld

SIZE = 6
request = st.tuples(
    st.integers(0, SIZE - 1),  # the user
    st.one_of(st.integers(0, SIZE - 1), st.just(-1)),  # the promoter; -1: an unknown code
)


class Population:
    """SIZE fresh users, each an approved promoter (so any of them can be a parent)."""

    def __init__(self, people: list[tuple[int, str]]) -> None:
        self.ids = [user_id for user_id, _ in people]
        self.codes = [code for _, code in people]
        self.index = {user_id: n for n, user_id in enumerate(self.ids)}

    @classmethod
    async def make(cls, world: UserWorld) -> Population:
        tag = secrets.token_hex(4)
        return cls([await world.promoter(f"{tag}-{n}") for n in range(SIZE)])

    def bind_request(self, user: int, promoter: int) -> BindRequest:
        code = self.codes[promoter] if promoter >= 0 else "NOSUCHCODE"
        return BindRequest(self.ids[user], code, "link")

    def view(self, outcome: Attached | Exception) -> tuple[Any, ...]:
        """An outcome in population-independent terms."""
        if isinstance(outcome, TuikeError):
            return ("refused", outcome.code)
        assert isinstance(outcome, Attached), outcome
        relation = outcome.relation
        return (
            "bound",
            outcome.changed,
            self.index[int(relation["parent_id"])],
            self.index[int(relation["root_id"])],
            relation["level"],
        )

    async def tree(self, db: Database) -> dict[int, tuple[int | None, list[int]]]:
        """Each user's parent and level 1-3 counts."""
        shape: dict[int, tuple[int | None, list[int]]] = {}
        async with db.read(may_lag=False) as conn:
            for n, user_id in enumerate(self.ids):
                table, counts = relations.for_id(user_id), team_counts.for_id(user_id)
                parent = (
                    await conn.execute(select(table.c.parent_id).where(table.c.user_id == user_id))
                ).scalar_one_or_none()
                row = (
                    (await conn.execute(select(counts).where(counts.c.user_id == user_id)))
                    .mappings()
                    .first()
                )
                levels = [int(row[f"level{k}_count"]) if row else 0 for k in (1, 2, 3)]
                shape[n] = (self.index[int(parent)] if parent is not None else None, levels)
        return shape


def _queue(world: UserWorld, db: Database, max_batch: int) -> BindQueue:
    async def run_batch(requests: list[BindRequest]) -> list[Outcome]:
        async def work(tx: Tx) -> list[Outcome]:
            return await bind_many(tx, world.ids, await world.settings.in_tx(tx), requests)

        return await db.run(work)

    return BindQueue(run_batch, max_batch=max_batch)


async def _gather(queue: BindQueue, requests: list[BindRequest]) -> list[Attached | Exception]:
    results = await asyncio.gather(*(queue.bind(r) for r in requests), return_exceptions=True)
    return [r if isinstance(r, Attached | Exception) else Exception(repr(r)) for r in results]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    requests=st.lists(request, min_size=1, max_size=12),
    mode=st.sampled_from(["first", "override"]),
    max_batch=st.integers(1, 8),
)
async def test_a_batch_decides_like_one_bind_after_another(
    world: UserWorld, requests: list[tuple[int, int]], mode: str, max_batch: int
) -> None:
    await world.configure(bind_mode=mode)
    one_by_one, batched = await Population.make(world), await Population.make(world)

    alone: list[tuple[Any, ...]] = []
    for user, promoter in requests:
        bind = one_by_one.bind_request(user, promoter)
        try:
            alone.append(one_by_one.view(await world.bind(bind.user_id, bind.code, bind.source)))
        except TuikeError as refusal:
            alone.append(one_by_one.view(refusal))

    queue = _queue(world, world.db, max_batch)
    together = await _gather(queue, [batched.bind_request(u, p) for u, p in requests])

    assert [batched.view(o) for o in together] == alone
    assert await batched.tree(world.db) == await one_by_one.tree(world.db)


async def test_two_queues_on_one_database_never_both_win_a_user(
    world: UserWorld, db: Database
) -> None:
    """Two processes bind the same users under different promoters at once (``first``
    mode): each user ends under exactly one of them, one request wins, the other is told
    ``relation.already_bound``; on MariaDB the losing batch is retried one bind at a time."""
    await world.configure(bind_mode="first")
    left_promoter, left_code = await world.promoter(f"left-{secrets.token_hex(3)}")
    right_promoter, right_code = await world.promoter(f"right-{secrets.token_hex(3)}")
    people = [await world.user(f"p-{secrets.token_hex(4)}") for _ in range(40)]
    other = Database(db.url)  # a second process's engines
    try:
        left, right = _queue(world, world.db, 16), _queue(world, other, 16)
        left_results, right_results = await asyncio.gather(
            _gather(left, [BindRequest(u, left_code, "link") for u in people]),
            _gather(right, [BindRequest(u, right_code, "link") for u in people]),
        )
    finally:
        await other.dispose()
    for user_id, mine, theirs in zip(people, left_results, right_results, strict=True):
        outcomes = [mine, theirs]
        winners = [o for o in outcomes if isinstance(o, Attached)]
        losers = [o for o in outcomes if isinstance(o, TuikeError)]
        assert len(winners) == 1 and winners[0].changed, outcomes
        assert [loser.code for loser in losers] == ["relation.already_bound"], outcomes
        async with world.db.read(may_lag=False) as conn:
            table = relations.for_id(user_id)
            parent = (
                await conn.execute(select(table.c.parent_id).where(table.c.user_id == user_id))
            ).scalar_one()
        assert parent == winners[0].relation["parent_id"]
        assert parent in (left_promoter, right_promoter)
    counts = await Population([(left_promoter, ""), (right_promoter, "")]).tree(world.db)
    assert counts[0][1][0] + counts[1][1][0] == len(people)


@given(
    depth=st.integers(1, 40),
    rebind=st.booleans(),
    microsecond=st.sampled_from([0, 1, 999_999, 123_456]),
)
@settings(max_examples=60, deadline=None)
def test_hand_built_event_data_equals_the_pydantic_contract(
    depth: int, rebind: bool, microsecond: int
) -> None:
    chain = [1_000_000 + n * 37 for n in range(depth)]
    user_id = 9_999_999_999
    parent_path = paths.path_of(chain)
    now = datetime(2026, 11, 26, 15, 30, 1, microsecond)
    current = (
        {"parent_id": 42, "path": paths.path_of([7, 42, user_id]), "bound_at": now}
        if rebind
        else None
    )
    plan = plan_attach(
        user_id,
        chain[-1],
        parent_path=parent_path,
        current=current,
        old_path=current["path"] if current else paths.root_path(user_id),
        subtree={"level1_count": 0, "level2_count": 0, "level3_count": 0, "team_size": 0},
        now=now,
        source="link",
        kind="rebind" if rebind else "bind",
    )
    contract = UserBound(
        user_id=user_id,
        parent_id=chain[-1],
        previous_parent_id=42 if rebind else None,
        level=depth + 1,
        bind_source="link",
        bound_at=now,
        ancestor_path=parent_path,
        previous_ancestor_path=paths.path_of([7, 42]) if rebind else None,
    )
    # Version 2 leaves version 1's lists out: a consumer that knows only version 1 fails
    # loudly on the missing ancestor_ids instead of counting no ancestors.
    written = contract.model_dump(mode="json", exclude={"ancestor_ids", "previous_ancestor_ids"})
    assert event_data(plan, now) == written
    assert UserBound.model_validate(written).ancestors() == list(reversed(chain))
    assert UserBound.model_validate(written).previous_ancestors() == ([42, 7] if rebind else [])


@given(chain=st.lists(st.integers(1, 2**63 - 1), min_size=1, max_size=30, unique=True))
def test_path_shortcuts_agree_with_a_full_parse(chain: list[int]) -> None:
    path = paths.path_of(chain)
    assert paths.ids_of(path) == chain
    assert paths.first_id(path) == chain[0]
    assert paths.depth_of(path) == len(chain)
    assert paths.decimal_path(path) == "," + "".join(f"{i}," for i in chain)
    for levels in range(0, len(chain) + 2):
        assert paths.nearest_ancestors(path, levels) == list(reversed(chain[:-1]))[:levels]
