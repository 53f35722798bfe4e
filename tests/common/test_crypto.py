"""Field encryption (AES-256-GCM bound to row and field, key ids for rotation) and blind
indexes (HMAC over E.164 phones) of libs/common/crypto.py."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from libs.common.crypto import (
    BlindIndex,
    FieldCipher,
    Keyring,
    UndecryptableError,
    decode_key,
    decode_keys,
    derive_dev_key,
    key_id,
    normalize_phone,
)


def _cipher(*keys: bytes, context: str = "user") -> FieldCipher:
    return FieldCipher(Keyring(keys[0], keys[1:]), context=context)


def test_a_value_round_trips_and_is_never_stored_in_clear() -> None:
    key = os.urandom(32)
    cipher = _cipher(key)
    stored = cipher.encrypt("13812341234", row_id=7, field="phone")
    assert stored.startswith(f"enc1:{key_id(key)}:")
    assert "13812341234" not in stored
    assert b"13812341234" not in base64.b64decode(stored.split(":", 2)[2])
    assert cipher.decrypt(stored, row_id=7, field="phone") == "13812341234"
    # A fresh nonce each time: equal values do not show as equal ciphertexts.
    assert stored != cipher.encrypt("13812341234", row_id=7, field="phone")


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=200), st.integers(min_value=1, max_value=2**63 - 1))
def test_any_text_round_trips(value: str, row_id: int) -> None:
    cipher = _cipher(b"k" * 32)
    assert (
        cipher.decrypt(
            cipher.encrypt(value, row_id=row_id, field="nickname"), row_id=row_id, field="nickname"
        )
        == value
    )


def test_a_ciphertext_moved_to_another_row_field_or_table_does_not_decrypt() -> None:
    key = os.urandom(32)
    stored = _cipher(key).encrypt("13812341234", row_id=7, field="phone")
    with pytest.raises(UndecryptableError, match="copied from another row"):
        _cipher(key).decrypt(stored, row_id=8, field="phone")
    with pytest.raises(UndecryptableError):
        _cipher(key).decrypt(stored, row_id=7, field="device_id")
    with pytest.raises(UndecryptableError):
        _cipher(key, context="payee").decrypt(stored, row_id=7, field="phone")


def test_an_edited_or_malformed_value_does_not_decrypt() -> None:
    cipher = _cipher(os.urandom(32))
    stored = cipher.encrypt("13812341234", row_id=7, field="phone")
    head, body = stored.rsplit(":", 1)
    raw = bytearray(base64.b64decode(body))
    raw[-1] ^= 1
    with pytest.raises(UndecryptableError):
        cipher.decrypt(f"{head}:{base64.b64encode(bytes(raw)).decode()}", row_id=7, field="phone")
    for junk in ("13812341234", "enc1:zz:abc", f"{head}:not base64!", f"{head}:"):
        with pytest.raises(UndecryptableError):
            cipher.decrypt(junk, row_id=7, field="phone")


def test_rotation_reads_old_values_writes_new_ones_and_names_a_missing_key() -> None:
    old, new = os.urandom(32), os.urandom(32)
    written_before = _cipher(old).encrypt("13812341234", row_id=1, field="phone")
    rotated = _cipher(new, old)
    assert rotated.decrypt(written_before, row_id=1, field="phone") == "13812341234"
    assert not rotated.is_current(written_before)
    written_after = rotated.encrypt("13900001111", row_id=1, field="phone")
    assert rotated.key_id_of(written_after) == key_id(new) and rotated.is_current(written_after)
    with pytest.raises(UndecryptableError, match="not configured") as missing:
        _cipher(new).decrypt(written_before, row_id=1, field="phone")
    assert missing.value.key_id == key_id(old)


def test_keys_come_as_base64_or_hex_of_32_bytes() -> None:
    key = os.urandom(32)
    assert decode_key(base64.b64encode(key).decode()) == key
    assert decode_key(key.hex()) == key
    assert decode_keys(f" {base64.b64encode(key).decode()} ,{key.hex()}") == [key, key]
    assert decode_keys("") == []
    for bad in ("not a key", base64.b64encode(os.urandom(16)).decode(), "ab" * 31):
        with pytest.raises(ValueError):
            decode_key(bad, name="TUIKE_PII_ENCRYPTION_KEY")
    ring = Keyring.from_settings(key.hex(), base64.b64encode(b"o" * 32).decode(), name="k")
    assert ring.ids == [key_id(key), key_id(b"o" * 32)]
    # Development keys are stable for one secret and differ by purpose.
    assert derive_dev_key("s", "a") == derive_dev_key("s", "a") != derive_dev_key("s", "b")


def test_phones_normalise_to_e164_whatever_the_formatting() -> None:
    same = ["13812341234", "138 1234 1234", "+86 138-1234-1234", "008613812341234"]
    assert {normalize_phone(p) for p in same} == {"+8613812341234"}
    assert normalize_phone("8613812341234") == "+8613812341234"
    assert normalize_phone("+44 7700 900123") == normalize_phone("07700 900123", "GB")
    assert normalize_phone("+44 7700 900123") != normalize_phone("07700 900123")  # read as CN
    for bad in ("", "abc", "12", "138-1234-abcd", "+", "1" * 60):
        with pytest.raises(ValueError):
            normalize_phone(bad)


def test_the_blind_index_matches_equal_phones_only_and_survives_a_key_rotation() -> None:
    old, new = os.urandom(32), os.urandom(32)
    before = BlindIndex(Keyring(old), context="user.phone")
    after = BlindIndex(Keyring(new, [old]), context="user.phone")
    phone = normalize_phone("13812341234")
    stored = before.compute(phone)
    assert stored.startswith(f"{key_id(old)}:") and len(stored) == 8 + 1 + 16
    assert stored == before.compute(normalize_phone("+86 138 1234 1234"))
    assert stored != before.compute(normalize_phone("13812341235"))
    # Another context (field) or key gives unrelated digests.
    assert stored != BlindIndex(Keyring(old), context="user.device").compute(phone)
    # After a rotation a lookup searches under both keys, so old rows are still found.
    assert after.candidates(phone) == [after.compute(phone), stored]
    assert not after.is_current(stored) and after.is_current(after.compute(phone))
