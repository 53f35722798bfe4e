from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.commission.withdrawals.identity import (
    id_number_check_character,
    is_valid_bank_card,
    is_valid_id_number,
    luhn_check_digit,
)

# GB 11643-1999's own example and commonly published test numbers.
VALID_IDS = ["11010519491231002X", "110101199003074514", "440306198512161231"]


@pytest.mark.parametrize("value", VALID_IDS)
def test_valid_resident_id_numbers(value: str) -> None:
    assert is_valid_id_number(value)
    assert is_valid_id_number(value.lower())  # a lowercase x is accepted


@pytest.mark.parametrize(
    "value",
    [
        "110105194912310021",  # wrong check character (X expected)
        "110101199003074518",  # wrong check digit (4 expected)
        "11010119900307451",  # 17 characters
        "1101011990030745188",  # 19 characters
        "11010119901307451X",  # month 13
        "1101011990A307451X",  # a letter in the body
        "110101209901014513",  # born in the future
    ],
)
def test_invalid_resident_id_numbers(value: str) -> None:
    assert not is_valid_id_number(value, today=date(2026, 1, 1))


def test_check_character_of_the_standard_example() -> None:
    assert id_number_check_character("11010519491231002") == "X"


@pytest.mark.parametrize(
    "card",
    ["4111111111111111", "6222021234567890128", "6222 0212 3456 7890 128", "6011000990139424"],
)
def test_valid_cards(card: str) -> None:
    assert is_valid_bank_card(card)


@pytest.mark.parametrize(
    "card", ["4111111111111112", "6222021234567890123", "12345", "4111-1111-1111-111a"]
)
def test_invalid_cards(card: str) -> None:
    assert not is_valid_bank_card(card)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="0123456789", min_size=11, max_size=18), st.integers(1, 9))
def test_luhn_digit_validates_and_a_changed_digit_does_not(payload: str, bump: int) -> None:
    card = payload + luhn_check_digit(payload)
    assert is_valid_bank_card(card)
    changed = card[:-1] + str((int(card[-1]) + bump) % 10)
    assert not is_valid_bank_card(changed)
