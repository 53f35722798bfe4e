"""Attribution (ARCHITECTURE §5): the binding wins; a code decides only for an unbound buyer
(binding them) or under ``override`` (rebinding them)."""

from __future__ import annotations

from typing import Any

import pytest

from libs.common.db.engine import Tx
from libs.common.errors import TuikeError
from services.user import promoters, relations
from services.user.attribution import attribute
from tests.user.conftest import UserWorld


async def _attribute(
    world: UserWorld, buyer: int, code: str | None, levels: int = 3
) -> dict[str, Any]:
    async def work(tx: Tx) -> dict[str, Any]:
        return await attribute(tx, world.ids, await world.settings.in_tx(tx), buyer, code, levels)

    return await world.run(work)


def _chain(result: dict[str, Any]) -> list[tuple[int, int]]:
    return [(b["level"], b["user_id"]) for b in result["beneficiaries"]]


async def _three_level_chain(world: UserWorld) -> tuple[int, int, int, str]:
    top, top_code = await world.promoter("top")
    mid, mid_code = await world.promoter("mid")
    low, low_code = await world.promoter("low")
    await world.bind(mid, top_code)
    await world.bind(low, mid_code)
    return top, mid, low, low_code


async def test_an_unbound_buyer_is_bound_by_the_code(world: UserWorld) -> None:
    top, mid, low, low_code = await _three_level_chain(world)
    buyer = await world.user("buyer")
    result = await _attribute(world, buyer, low_code)
    assert result["promoter_id"] == low
    assert _chain(result) == [(1, low), (2, mid), (3, top)]
    assert (result["bound"], result["rebound"]) == (True, False)
    assert (await relations.get_relation(world.db, buyer, _now()))["bind_source"] == "code"
    assert _chain(await _attribute(world, buyer, None, levels=2)) == [(1, low), (2, mid)]


async def test_the_binding_wins_over_another_code(world: UserWorld) -> None:
    _, _, low, low_code = await _three_level_chain(world)
    _, other_code = await world.promoter("other")
    buyer = await world.user("buyer")
    await world.bind(buyer, low_code)
    result = await _attribute(world, buyer, other_code)
    assert result["promoter_id"] == low
    assert (result["bound"], result["rebound"]) == (False, False)


async def test_override_mode_rebinds_to_the_code(world: UserWorld) -> None:
    _, _, _, low_code = await _three_level_chain(world)
    other, other_code = await world.promoter("other")
    buyer = await world.user("buyer")
    await world.bind(buyer, low_code)
    await world.configure(bind_mode="override")
    result = await _attribute(world, buyer, other_code)
    assert _chain(result) == [(1, other)]
    assert (result["bound"], result["rebound"]) == (False, True)
    assert len(await world.events("user.rebound")) == 1


async def test_nobody_and_bad_codes_are_not_errors(world: UserWorld) -> None:
    disabled, disabled_code = await world.promoter("disabled")

    async def disable(tx: Tx) -> dict:  # type: ignore[type-arg]
        return await promoters.change_promoter(tx, disabled, "disable")

    await world.run(disable)
    buyer = await world.user("buyer")
    for code in (None, "", "ZZZZZZZZ", "not a code", "X" * 300, disabled_code):
        result = await _attribute(world, buyer, code)
        assert result == {
            "buyer_user_id": buyer,
            "promoter_id": None,
            "beneficiaries": [],
            "rebound": False,
            "bound": False,
        }
    # The buyer's own code: no self-purchase attribution, no self-bind.
    own, own_code = await world.promoter("own")
    assert (await _attribute(world, own, own_code))["promoter_id"] is None


async def test_unknown_buyer_is_not_found(world: UserWorld) -> None:
    with pytest.raises(TuikeError) as refused:
        await _attribute(world, 99999, None)
    assert (refused.value.status, refused.value.code) == (404, "user.not_found")


async def test_register_window_closed_attributes_without_binding(world: UserWorld) -> None:
    from datetime import timedelta

    from sqlalchemy import update

    from libs.common.ids import shard_of
    from services.user.models import users

    top, mid, low, low_code = await _three_level_chain(world)
    await world.configure(bind_mode="register_only", register_window_minutes=5)
    buyer = await world.user("old-buyer")

    async def age(tx: Tx) -> None:
        table = users.for_id(buyer)
        await (await tx.shard(shard_of(buyer))).execute(
            update(table).where(table.c.id == buyer).values(created_at=_now() - timedelta(hours=1))
        )

    await world.run(age)
    result = await _attribute(world, buyer, low_code)
    assert _chain(result) == [(1, low), (2, mid), (3, top)]
    assert (result["bound"], result["rebound"]) == (False, False)
    assert (await relations.get_relation(world.db, buyer, _now()))["parent_id"] is None


def _now():  # type: ignore[no-untyped-def]
    from libs.common.messaging.outbox import utcnow

    return utcnow()
