from __future__ import annotations

import base64
import os

import pytest

from services.commission.withdrawals.crypto import PayeeCipher


def test_round_trip_and_no_plaintext_in_the_stored_form() -> None:
    cipher = PayeeCipher(os.urandom(32))
    stored = cipher.encrypt("6222021234567890128", promoter_id=7, field="bank_card")
    assert "6222021234567890128" not in stored and stored.startswith("v1:")
    assert cipher.decrypt(stored, promoter_id=7, field="bank_card") == "6222021234567890128"
    # a fresh nonce every time: the same value never encrypts the same way twice
    assert stored != cipher.encrypt("6222021234567890128", promoter_id=7, field="bank_card")


def test_a_value_moved_to_another_row_or_field_does_not_decrypt() -> None:
    cipher = PayeeCipher(os.urandom(32))
    stored = cipher.encrypt("张三", promoter_id=7, field="real_name")
    with pytest.raises(ValueError):
        cipher.decrypt(stored, promoter_id=8, field="real_name")
    with pytest.raises(ValueError):
        cipher.decrypt(stored, promoter_id=7, field="id_number")


def test_another_key_does_not_decrypt() -> None:
    stored = PayeeCipher(os.urandom(32)).encrypt("x", promoter_id=1, field="real_name")
    with pytest.raises(ValueError):
        PayeeCipher(os.urandom(32)).decrypt(stored, promoter_id=1, field="real_name")


def test_key_from_setting_base64_or_hex() -> None:
    key = os.urandom(32)
    a = PayeeCipher.from_setting(base64.b64encode(key).decode())
    b = PayeeCipher.from_setting(key.hex())
    assert b.decrypt(a.encrypt("v", promoter_id=1, field="f"), promoter_id=1, field="f") == "v"
    with pytest.raises(ValueError):
        PayeeCipher.from_setting("not a key")


def test_the_development_key_survives_a_restart_of_make_run() -> None:
    """`make run` keeps the bootstrap admin key but mints a new internal key at each start:
    payee details saved before a restart must still read after it."""
    from services.commission.withdrawals.settings import WithdrawalDeploySettings

    before = WithdrawalDeploySettings(bootstrap_admin_key="dev-admin-key", internal_api_key="a1")
    after = WithdrawalDeploySettings(bootstrap_admin_key="dev-admin-key", internal_api_key="b2")
    stored = before.cipher().encrypt("6222021234567890128", promoter_id=7, field="bank_card")
    assert after.cipher().decrypt(stored, promoter_id=7, field="bank_card") == (
        "6222021234567890128"
    )
