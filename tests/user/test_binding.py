"""Binding by promoter code: the four modes, every refusal, history, events, team counts."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from libs.common.db.engine import Tx
from libs.common.errors import TuikeError
from libs.common.ids import shard_of
from services.user import promoters, relations
from services.user.history import get_history
from services.user.models import bind_history, users
from tests.user.conftest import UserWorld


async def _refused(world: UserWorld, user_id: int, code: str) -> TuikeError:
    with pytest.raises(TuikeError) as refused:
        await world.bind(user_id, code)
    return refused.value


async def _history_count(world: UserWorld) -> int:
    total = 0
    async with world.db.read(may_lag=False) as conn:
        for table in bind_history.tables:
            total += int(await conn.scalar(select(func.count()).select_from(table)) or 0)
    return total


async def test_bind_builds_the_path_and_levels(world: UserWorld) -> None:
    root, root_code = await world.promoter("root")
    mid, mid_code = await world.promoter("mid")
    buyer = await world.user("buyer")
    first = await world.bind(mid, root_code)
    assert first.changed
    assert first.relation["parent_id"] == root and first.relation["level"] == 2
    bound = (await world.bind(buyer, mid_code)).relation
    assert bound["parent_id"] == mid and bound["root_id"] == root and bound["level"] == 3
    assert bound["path"] == f",{root},{mid},{buyer},"
    assert bound["bind_source"] == "code" and bound["expires_at"] is None
    assert [a["user_id"] for a in await relations.get_ancestors(world.db, buyer, 10)] == [
        mid,
        root,
    ]
    assert (await relations.get_team(world.db, root))["level2_count"] == 1
    assert (await relations.get_team(world.db, mid))["level1_count"] == 1
    event = (await world.events("user.bound"))[-1]
    assert event["key"] == str(buyer)
    assert event["data"]["ancestor_ids"] == [str(mid), str(root)]
    assert event["data"]["level"] == 3
    history = await get_history(world.db, buyer)
    assert [(h["kind"], h["parent_id"]) for h in history] == [("bind", mid)]


async def test_refusals_have_distinct_codes_and_write_nothing(world: UserWorld) -> None:
    root, root_code = await world.promoter("root")
    child, child_code = await world.promoter("child")
    other, other_code = await world.promoter("other")
    await world.bind(child, root_code)
    before_history, before_events = await _history_count(world), len(await world.events())

    assert (await _refused(world, root, root_code)).code == "relation.self_bind"
    assert (await _refused(world, root, child_code)).code == "relation.cycle"
    refusal = await _refused(world, child, other_code)
    assert (refusal.status, refusal.code) == (409, "relation.already_bound")
    unknown = await _refused(world, child, "ZZZZZZZZ")
    assert (unknown.status, unknown.code) == (404, "promoter.code_not_found")
    assert (await _refused(world, child, "bad code!")).code == "promoter.code_not_found"
    assert (await _refused(world, 424242, root_code)).code == "user.not_found"

    async def disable(tx: Tx) -> dict:  # type: ignore[type-arg]
        return await promoters.change_promoter(tx, other, "disable")

    await world.run(disable)
    newcomer = await world.user("newcomer")
    assert (await _refused(world, newcomer, other_code)).code == "promoter.disabled"
    assert await _history_count(world) == before_history
    assert len(await world.events()) == before_events + 2
    # Only promoter.disabled and the newcomer's user.registered were written.
    assert (await relations.get_relation(world.db, newcomer, _now()))["parent_id"] is None


def _now():  # type: ignore[no-untyped-def]
    from libs.common.messaging.outbox import utcnow

    return utcnow()


async def test_a_cycle_at_any_depth_is_refused(world: UserWorld) -> None:
    chain = [await world.promoter(f"c{n}") for n in range(12)]
    for (child, _), (_, parent_code) in zip(chain[1:], chain, strict=False):
        await world.bind(child, parent_code)
    top, _ = chain[0]
    assert (await _refused(world, top, chain[-1][1])).code == "relation.cycle"


async def test_binding_again_under_the_same_parent_is_a_no_op(world: UserWorld) -> None:
    _, code = await world.promoter("p")
    buyer = await world.user("b")
    await world.bind(buyer, code)
    again = await world.bind(buyer, code)
    assert not again.changed
    assert len(await world.events("user.bound")) == 1


async def test_concurrent_binds_of_one_user_exactly_one_wins(world: UserWorld) -> None:
    codes = [(await world.promoter(f"p{n}"))[1] for n in range(4)]
    buyer = await world.user("contested")
    outcomes = await asyncio.gather(
        *(world.bind(buyer, code) for code in codes), return_exceptions=True
    )
    wins = [o for o in outcomes if not isinstance(o, BaseException)]
    losses = [o for o in outcomes if isinstance(o, TuikeError)]
    assert len(wins) == 1 and len(losses) == 3
    assert {loss.code for loss in losses} <= {"relation.already_bound", "relation.changed"}
    assert len(await get_history(world.db, buyer)) == 1
    assert len(await world.events("user.bound")) == 1


async def test_override_mode_rebinds_and_moves_the_level_counts(world: UserWorld) -> None:
    await world.configure(bind_mode="override")
    first, first_code = await world.promoter("first")
    second, second_code = await world.promoter("second")
    buyer = await world.user("buyer")
    await world.bind(buyer, first_code)
    rebound = await world.bind(buyer, second_code)
    assert rebound.changed and rebound.relation["parent_id"] == second
    assert (await relations.get_team(world.db, first))["level1_count"] == 0
    assert (await relations.get_team(world.db, second))["level1_count"] == 1
    event = (await world.events("user.rebound"))[0]
    assert event["data"]["previous_parent_id"] == str(first)
    assert event["data"]["previous_ancestor_ids"] == [str(first)]
    kinds = [h["kind"] for h in await get_history(world.db, buyer)]
    assert kinds == ["rebind", "bind"]


async def test_register_only_mode_binds_new_users_only(world: UserWorld) -> None:
    await world.configure(bind_mode="register_only", register_window_minutes=60)
    _, code = await world.promoter("p")
    fresh = await world.user("fresh")
    old = await world.user("old")

    async def age(tx: Tx) -> None:
        table = users.for_id(old)
        await (await tx.shard(shard_of(old))).execute(
            update(table).where(table.c.id == old).values(created_at=_now() - timedelta(minutes=61))
        )

    await world.run(age)
    assert (await world.bind(fresh, code)).changed
    refusal = await _refused(world, old, code)
    assert (refusal.status, refusal.code) == (409, "relation.register_window_closed")


async def test_expiring_mode_lets_an_expired_bind_be_replaced(world: UserWorld) -> None:
    await world.configure(bind_mode="expiring", bind_ttl_days=7)
    first, first_code = await world.promoter("first")
    second, second_code = await world.promoter("second")
    buyer = await world.user("buyer")
    bound = (await world.bind(buyer, first_code)).relation
    assert bound["expires_at"] - bound["bound_at"] == timedelta(days=7)
    assert (await _refused(world, buyer, second_code)).code == "relation.already_bound"

    async def expire(tx: Tx) -> None:
        from services.user.models import relations as relation_tables

        table = relation_tables.for_id(buyer)
        await (await tx.shard(shard_of(buyer))).execute(
            update(table)
            .where(table.c.user_id == buyer)
            .values(expires_at=_now() - timedelta(seconds=1))
        )

    await world.run(expire)
    assert not (await relations.get_relation(world.db, buyer, _now()))["active"]
    rebound = await world.bind(buyer, second_code)
    assert rebound.relation["parent_id"] == second and rebound.relation["active"]
    assert (await relations.get_team(world.db, first))["level1_count"] == 0


async def test_first_bind_of_a_promoter_with_a_team_carries_the_team(world: UserWorld) -> None:
    top, top_code = await world.promoter("top")
    lead, lead_code = await world.promoter("lead")
    member, member_code = await world.promoter("member")
    buyer = await world.user("buyer")
    await world.bind(member, lead_code)
    await world.bind(buyer, member_code)
    # lead (a root with a two-level team) now binds under top.
    await world.bind(lead, top_code)
    team = await relations.get_team(world.db, top)
    assert (team["level1_count"], team["level2_count"], team["level3_count"]) == (1, 1, 1)
    # Ancestors are right at once, before the move job rewrote the stored paths.
    assert [a["user_id"] for a in await relations.get_ancestors(world.db, buyer, 5)] == [
        member,
        lead,
        top,
    ]
    await world.finish_moves()
    relation = await relations.get_relation(world.db, buyer, _now())
    assert relation["root_id"] == top and relation["level"] == 4
