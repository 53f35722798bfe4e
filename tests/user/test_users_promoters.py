"""Users (idempotent per platform) and promoters (codes, apply / approve / disable)."""

from __future__ import annotations

import pytest

from libs.common.db.engine import Tx
from libs.common.errors import TuikeError
from services.user import promoters, users
from services.user.promoters import CODE_ALPHABET
from tests.user.conftest import UserWorld


async def test_a_user_is_created_once_per_platform_and_external_id(world: UserWorld) -> None:
    first = await world.user("u-1")
    assert await world.user("u-1") == first
    other_platform = await world.user("u-1", platform="shop2")
    assert other_platform != first
    assert (await users.get_user(world.db, first))["external_id"] == "u-1"
    registered = await world.events("user.registered")
    assert [e["data"]["user_id"] for e in registered] == [str(first), str(other_platform)]


async def test_unknown_user_is_not_found(world: UserWorld) -> None:
    with pytest.raises(TuikeError) as refused:
        await users.get_user(world.db, 12345)
    assert (refused.value.status, refused.value.code) == (404, "user.not_found")


async def test_admin_grant_gives_an_approved_promoter_with_a_short_code(world: UserWorld) -> None:
    user_id, code = await world.promoter("p-1")
    assert 8 <= len(code) <= 12 and set(code) <= set(CODE_ALPHABET)
    assert not set(code) & set("01OIL")
    found = await promoters.promoter_by_code(world.db, code.lower())
    assert (found["user_id"], found["status"]) == (user_id, "approved")
    approved = await world.events("promoter.approved")
    assert approved[0]["data"]["user_id"] == str(user_id)
    assert approved[0]["data"]["code"] == code


async def test_codes_are_unique(world: UserWorld) -> None:
    codes = {(await world.promoter(f"p-{n}"))[1] for n in range(30)}
    assert len(codes) == 30


async def test_apply_then_approve_and_the_status_rules(world: UserWorld) -> None:
    user_id = await world.user("applicant")

    async def apply(tx: Tx) -> tuple[dict, bool]:  # type: ignore[type-arg]
        return await promoters.become_promoter(
            tx, user_id, await world.settings.in_tx(tx), by_admin=False
        )

    pending, created = await world.run(apply)
    assert created and pending["status"] == "pending"
    assert (await world.run(apply))[0]["status"] == "pending"  # a repeat changes nothing

    async def act(action: str) -> dict:  # type: ignore[type-arg]
        async def work(tx: Tx) -> dict:  # type: ignore[type-arg]
            return await promoters.change_promoter(tx, user_id, action)

        return await world.run(work)

    with pytest.raises(TuikeError) as refused:
        await act("disable")
    assert refused.value.code == "promoter.invalid_transition"
    assert (await act("approve"))["status"] == "approved"
    assert (await act("approve"))["status"] == "approved"  # no-op
    assert (await act("disable"))["status"] == "disabled"
    assert (await act("disable"))["status"] == "disabled"
    assert (await act("enable"))["status"] == "approved"
    types = [e["type"] for e in await world.events() if e["key"] == str(user_id)]
    assert types == [
        "user.registered",
        "promoter.approved",
        "promoter.disabled",
        "promoter.enabled",
    ]


async def test_qualification_everyone_and_admin(world: UserWorld) -> None:
    await world.configure(promoter_qualification="everyone")
    user_id = await world.user("anyone")

    async def apply(tx: Tx) -> tuple[dict, bool]:  # type: ignore[type-arg]
        return await promoters.become_promoter(
            tx, user_id, await world.settings.in_tx(tx), by_admin=False
        )

    assert (await world.run(apply))[0]["status"] == "approved"
    await world.configure(promoter_qualification="admin")
    user_id = await world.user("not-admin-made")
    with pytest.raises(TuikeError) as refused:
        await world.run(apply)
    assert (refused.value.status, refused.value.code) == (403, "promoter.admin_only")
    async with world.db.read(may_lag=False) as conn:
        assert await promoters.load_promoter(conn, user_id) is None
