"""Personal data at rest in the user service: what the database holds (read directly), what
the API shows, lookup by phone through the blind index, tampered rows, key rotation, and the
background pass that seals rows written before migration 3. SQLite and MariaDB."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from deploy.local.stack import Stack
from libs.common.crypto import Keyring, key_id
from libs.common.db.engine import Database, Tx
from libs.common.db.migrations import migrate, schema_migrations
from libs.common.errors import TuikeError
from libs.common.ids import SHARD_COUNT, shard_of
from services.user import users
from services.user.bulk_import import import_file
from services.user.migrations import MIGRATIONS
from services.user.models import users as user_tables
from services.user.pii import UserPii, pass_status, run_pass, run_pass_batch
from services.user.settings import UserDeploySettings
from tests.gateway.conftest import bearer, token
from tests.user.conftest import UserWorld

PHONE = "13812341234"


def _pii(encryption: list[bytes], index: list[bytes]) -> UserPii:
    return UserPii.from_keys(
        Keyring(encryption[0], encryption[1:]), Keyring(index[0], index[1:]), "CN"
    )


@pytest.fixture
def pii() -> UserPii:
    return _pii([os.urandom(32)], [os.urandom(32)])


def test_keys_come_from_the_environment_with_a_stable_development_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    enc, old, idx = os.urandom(32), os.urandom(32), os.urandom(32)
    monkeypatch.setenv("TUIKE_PII_ENCRYPTION_KEY", base64.b64encode(enc).decode())
    monkeypatch.setenv("TUIKE_PII_ENCRYPTION_OLD_KEYS", old.hex())
    monkeypatch.setenv("TUIKE_PII_INDEX_KEY", idx.hex())
    configured = UserPii.from_settings(UserDeploySettings())
    assert configured.cipher.keyring.ids == [key_id(enc), key_id(old)]
    assert configured.phone_index.keyring.ids == [key_id(idx)]
    monkeypatch.setenv("TUIKE_PII_ENCRYPTION_KEY", "too short")
    with pytest.raises(ValueError, match="TUIKE_PII_ENCRYPTION_KEY"):
        UserPii.from_settings(UserDeploySettings())
    for name in ("ENCRYPTION_KEY", "ENCRYPTION_OLD_KEYS", "INDEX_KEY"):
        monkeypatch.delenv(f"TUIKE_PII_{name}")
    # Unset: development keys from the bootstrap admin key, the same after a restart, and
    # never one key for both purposes.
    dev = UserPii.from_settings(UserDeploySettings(bootstrap_admin_key="dev-admin-key"))
    again = UserPii.from_settings(UserDeploySettings(bootstrap_admin_key="dev-admin-key"))
    assert dev.key_ids == again.key_ids
    assert dev.cipher.keyring.current != dev.phone_index.keyring.current
    # Production refuses to start without real keys.
    with pytest.raises(RuntimeError, match="TUIKE_PII_ENCRYPTION_KEY and TUIKE_PII_INDEX_KEY"):
        UserPii.from_settings(UserDeploySettings(pii_keys_required=True))


async def _create(world: UserWorld, pii: UserPii, external_id: str, **fields: Any) -> int:
    async def work(tx: Tx) -> tuple[dict[str, Any], bool]:
        return await users.create_user(
            tx, world.ids, users.NewUser(external_id=external_id, **fields), pii
        )

    user, created = await world.run(work)
    assert created
    return int(user["id"])


async def _raw(db: Database, user_id: int) -> dict[str, Any]:
    table = user_tables.for_id(user_id)
    async with db.read_shard(shard_of(user_id), may_lag=False) as conn:
        row = (await conn.execute(select(table).where(table.c.id == user_id))).mappings().one()
    return dict(row)


async def _set(db: Database, user_id: int, **values: Any) -> None:
    table = user_tables.for_id(user_id)

    async def work(tx: Tx) -> None:
        conn = await tx.shard(shard_of(user_id))
        await conn.execute(update(table).where(table.c.id == user_id).values(**values))

    await db.run(work)


def _holds_no(row: dict[str, Any], *secrets_: str) -> bool:
    return not any(s in str(value) for value in row.values() for s in secrets_)


async def test_the_row_holds_no_personal_data_in_clear(world: UserWorld, pii: UserPii) -> None:
    user_id = await _create(
        world, pii, "u-1", phone=PHONE, nickname="张三丰的小店", device_id="device-ab12cd"
    )
    row = await _raw(world.db, user_id)
    assert _holds_no(row, PHONE, "1234", "张三", "ab12cd")
    assert (row["phone"], row["nickname"], row["device_id"]) == (None, None, None)
    assert row["phone_enc"].startswith(f"enc1:{pii.cipher.keyring.current_id}:")
    assert row["phone_index"].startswith(f"{pii.phone_index.keyring.current_id}:")
    shown = await users.get_user(world.db, user_id, pii)
    assert (shown["phone"], shown["nickname"], shown["device_id"]) == (
        PHONE,
        "张三丰的小店",
        "device-ab12cd",
    )
    assert "phone_enc" not in shown and "phone_index" not in shown

    # The idempotent repeat of a create shows the same user in clear too.
    async def again(tx: Tx) -> tuple[dict[str, Any], bool]:
        return await users.create_user(tx, world.ids, users.NewUser(external_id="u-1"), pii)

    repeat, created = await world.run(again)
    assert not created and repeat["id"] == user_id and repeat["phone"] == PHONE
    # No personal fields: nothing sealed, no index.
    bare = await _raw(world.db, await _create(world, pii, "u-2"))
    assert (bare["phone_enc"], bare["nickname_enc"], bare["phone_index"]) == (None, None, None)


async def test_lookup_by_phone_finds_every_formatting_of_the_number(
    world: UserWorld, pii: UserPii
) -> None:
    first = await _create(world, pii, "a", phone="138 1234 1234")
    second = await _create(world, pii, "b", phone="+86 138-1234-1234")
    other_platform = await _create(world, pii, "c", phone=PHONE, platform="shop2")
    await _create(world, pii, "d", phone="13812341235")
    for query in (PHONE, "008613812341234", "+86 (138) 1234-1234"):
        found = await users.find_users_by_phone(world.db, pii, query, platform="default")
        assert [u["id"] for u in found] == sorted([first, second])
        assert [u["phone"] for u in found] == [
            {first: "138 1234 1234", second: "+86 138-1234-1234"}[u["id"]] for u in found
        ]
    everywhere = await users.find_users_by_phone(world.db, pii, PHONE, platform=None)
    assert sorted(u["id"] for u in everywhere) == sorted([first, second, other_platform])
    assert await users.find_users_by_phone(world.db, pii, "13900000000", platform=None) == []
    for malformed in ("abc", "12", "138****1234"):
        with pytest.raises(TuikeError) as refused:
            await users.find_users_by_phone(world.db, pii, malformed, platform=None)
        assert (refused.value.status, refused.value.code) == (400, "user.invalid_phone")


async def test_a_ciphertext_copied_onto_another_user_is_refused_not_shown(
    world: UserWorld, pii: UserPii
) -> None:
    victim = await _create(world, pii, "victim", phone=PHONE)
    other = await _create(world, pii, "other", phone="13900001111")
    stolen = await _raw(world.db, victim)
    await _set(world.db, other, phone_enc=stolen["phone_enc"], phone_index=stolen["phone_index"])
    with pytest.raises(TuikeError) as refused:
        await users.get_user(world.db, other, pii)
    assert (refused.value.status, refused.value.code) == (500, "user.pii_unreadable")
    assert refused.value.details["user_id"] == str(other)
    assert refused.value.details["field"] == "phone"
    assert PHONE not in refused.value.message
    # The lookup does not pass the copied row off as a match either.
    with pytest.raises(TuikeError) as in_lookup:
        await users.find_users_by_phone(world.db, pii, PHONE, platform=None)
    assert in_lookup.value.code == "user.pii_unreadable"
    assert (await users.get_user(world.db, victim, pii))["phone"] == PHONE


async def test_rows_sealed_with_old_keys_read_after_a_rotation_and_the_pass_rekeys_them(
    world: UserWorld,
) -> None:
    old_enc, old_idx, new_enc, new_idx = (os.urandom(32) for _ in range(4))
    before = _pii([old_enc], [old_idx])
    user_id = await _create(world, before, "rotated", phone=PHONE, nickname="老客户")
    rotated = _pii([new_enc, old_enc], [new_idx, old_idx])
    assert (await users.get_user(world.db, user_id, rotated))["nickname"] == "老客户"
    found = await users.find_users_by_phone(world.db, rotated, PHONE, platform=None)
    assert [u["id"] for u in found] == [user_id]
    fresh = await _create(world, rotated, "fresh", phone=PHONE)
    assert key_id(new_enc) in (await _raw(world.db, fresh))["phone_enc"]
    # Without the old key the old row is refused by name of the missing key.
    only_new = _pii([new_enc], [new_idx])
    with pytest.raises(TuikeError) as refused:
        await users.get_user(world.db, user_id, only_new)
    assert refused.value.details["key_id"] == key_id(old_enc)

    report = await run_pass(world.db, rotated, batch_size=1)
    assert report.changed == 1 and report.unreadable == 0
    row = await _raw(world.db, user_id)
    assert row["phone_enc"].startswith(f"enc1:{key_id(new_enc)}:")
    assert row["nickname_enc"].startswith(f"enc1:{key_id(new_enc)}:")
    assert row["phone_index"].startswith(f"{key_id(new_idx)}:")
    assert (await pass_status(world.db, rotated))["finished"]
    # Now the old keys can go: everything reads and is found with the new ones alone.
    assert (await users.get_user(world.db, user_id, only_new))["nickname"] == "老客户"
    found = await users.find_users_by_phone(world.db, only_new, PHONE, platform=None)
    assert sorted(u["id"] for u in found) == sorted([user_id, fresh])


async def _drop_pii_columns(db: Database) -> None:
    """Put the shards back in the shape of migration 2 (before personal data was sealed)."""
    async with db.primary.begin() as conn:
        for shard in range(SHARD_COUNT):
            name = user_tables.for_shard(shard).name
            index = f"ix_{name}_phone_index"
            await conn.execute(
                text(f"DROP INDEX {index}" if db.is_sqlite else f"DROP INDEX {index} ON {name}")
            )
            for column in ("phone_enc", "nickname_enc", "device_id_enc", "phone_index"):
                await conn.execute(text(f"ALTER TABLE {name} DROP COLUMN {column}"))
        await conn.execute(delete(schema_migrations).where(schema_migrations.c.version == 3))


async def test_migration_3_adds_the_columns_and_the_pass_seals_legacy_rows_resumably(
    world: UserWorld, pii: UserPii
) -> None:
    await _drop_pii_columns(world.db)
    legacy = {}
    async with world.db.primary.begin() as conn:
        for n in range(5):
            user_id = world.ids.next_id()
            legacy[user_id] = f"1390000{n:04d}"
            await conn.execute(
                text(
                    f"INSERT INTO {user_tables.for_id(user_id).name} "
                    "(id, platform, external_id, nickname, phone, device_id, created_at) "
                    "VALUES (:id, 'default', :ext, :nick, :phone, NULL, '2026-01-01 00:00:00')"
                ),
                {"id": user_id, "ext": f"old-{n}", "nick": f"老用户{n}", "phone": legacy[user_id]},
            )
    assert await migrate(world.db, MIGRATIONS) == [3]
    some_id, some_phone = next(iter(legacy.items()))
    # Before the pass: legacy rows still read (in clear), but have no index yet.
    assert (await users.get_user(world.db, some_id, pii))["phone"] == some_phone
    assert await users.find_users_by_phone(world.db, pii, some_phone, platform=None) == []

    first = await run_pass_batch(world.db, pii, batch_size=1)
    assert first is not None
    status = await pass_status(world.db, pii)
    assert not status["finished"]
    report = await run_pass(world.db, pii, batch_size=2)  # resumes where the first stopped
    assert first.changed + report.changed == len(legacy) and report.unreadable == 0
    assert (await pass_status(world.db, pii)) == {
        "key_ids": pii.key_ids,
        "finished": True,
        "rows_changed": len(legacy),
        "rows_unreadable": 0,
    }
    for user_id, phone in legacy.items():
        row = await _raw(world.db, user_id)
        assert _holds_no(row, phone, "老用户") and row["phone"] is None
        shown = await users.get_user(world.db, user_id, pii)
        assert shown["phone"] == phone and shown["nickname"].startswith("老用户")
        found = await users.find_users_by_phone(world.db, pii, f"+86 {phone}", platform=None)
        assert [u["id"] for u in found] == [user_id]
    assert await run_pass_batch(world.db, pii) is None  # nothing left to do


async def test_bulk_import_stores_personal_data_sealed(
    world: UserWorld, pii: UserPii, tmp_path: Path
) -> None:
    source = tmp_path / "users.jsonl"
    source.write_text(
        json.dumps({"external_id": "imp-1", "phone": PHONE, "nickname": "导入的人"}) + "\n",
        encoding="utf-8",
    )
    report = await import_file(world.db, world.ids, source, pii=pii)
    assert report.users_created == 1
    found = await users.find_users_by_phone(world.db, pii, PHONE, platform="default")
    assert [u["nickname"] for u in found] == ["导入的人"]
    assert _holds_no(await _raw(world.db, int(found[0]["id"])), PHONE, "导入")


# -- through the gateway, on the real stack ------------------------------------------------
async def _stack_row(stack: Stack, user_id: int) -> dict[str, Any]:
    engine = create_async_engine(stack.config.database_url("user"))
    try:
        table = user_tables.for_id(user_id)
        async with engine.connect() as conn:
            row = await conn.execute(select(table).where(table.c.id == user_id))
            return dict(row.mappings().one())
    finally:
        await engine.dispose()


@pytest.fixture
def gateway(stack: Stack) -> Iterator[httpx.Client]:
    """An anonymous client of the stack's gateway (callers bring their own token)."""
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        yield client


def test_the_api_shows_phones_to_pii_readers_masks_them_otherwise_and_finds_by_phone(
    stack: Stack, api: httpx.Client, gateway: httpx.Client
) -> None:
    platform = f"pii{secrets.token_hex(3)}"
    phone = f"139{secrets.randbelow(10**8):08d}"
    created = api.post(
        "/api/v1/users",
        json={"external_id": "p-1", "platform": platform, "phone": phone, "nickname": "小王"},
    )
    assert created.status_code == 201, created.text
    user_id = created.json()["id"]
    row = asyncio.run(_stack_row(stack, int(user_id)))
    assert _holds_no(row, phone, "小王") and row["phone_enc"].startswith("enc1:")

    spaced = f"+86 {phone[:3]} {phone[3:7]} {phone[7:]}"
    # An admin may read personal data: the phone in clear, found in any formatting.
    found = api.get("/api/v1/users", params={"phone": spaced})
    assert found.status_code == 200, found.text
    assert [(u["id"], u["phone"]) for u in found.json()["items"]] == [(user_id, phone)]
    assert api.get(f"/api/v1/users/{user_id}").json()["phone"] == phone
    # The platform without pii:read sees its user masked; with it, in clear.
    plain = bearer(token(stack, f"platform:{platform}", "platform", platform=platform))
    masked = gateway.get("/api/v1/users", params={"phone": phone}, headers=plain)
    assert masked.status_code == 200, masked.text
    assert [u["phone"] for u in masked.json()["items"]] == [f"{phone[:3]}****{phone[-4:]}"]
    reader = bearer(
        token(stack, f"platform:{platform}", "platform", platform=platform, scopes=["pii:read"])
    )
    clear = gateway.get("/api/v1/users", params={"phone": spaced}, headers=reader)
    assert [u["phone"] for u in clear.json()["items"]] == [phone]
    # Another platform finds nothing of it, and may not name it.
    stranger = bearer(token(stack, "platform:else", "platform", platform="else"))
    assert gateway.get("/api/v1/users", params={"phone": phone}, headers=stranger).json() == {
        "items": []
    }
    refused = gateway.get(
        "/api/v1/users", params={"phone": phone, "platform": platform}, headers=stranger
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "user.other_platform")
    # A promoter may not look users up; a malformed phone is a 400.
    promoter = bearer(token(stack, user_id, "promoter"))
    assert (
        gateway.get("/api/v1/users", params={"phone": phone}, headers=promoter).status_code == 403
    )
    bad = api.get("/api/v1/users", params={"phone": "138****1234"})
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "user.invalid_phone")
    assert api.get("/api/v1/users").status_code == 400
