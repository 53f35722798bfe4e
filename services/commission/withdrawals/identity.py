"""Check digits of the identity documents a payee gives: the Chinese resident ID number
(GB 11643-1999, ISO 7064 MOD 11-2) and bank card numbers (Luhn)."""

from __future__ import annotations

from datetime import date

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK_CHARACTERS = "10X98765432"


def id_number_check_character(first_seventeen: str) -> str:
    """The 18th character of a resident ID number from its first 17 digits."""
    total = sum(
        int(digit) * weight for digit, weight in zip(first_seventeen, _ID_WEIGHTS, strict=True)
    )
    return _ID_CHECK_CHARACTERS[total % 11]


def normalize_id_number(value: str) -> str:
    return value.strip().upper()


def is_valid_id_number(value: str, today: date | None = None) -> bool:
    """An 18-character resident ID number: 17 digits, a valid birth date (not in the
    future), and the right check character (a digit or ``X``)."""
    value = normalize_id_number(value)
    if len(value) != 18 or not value[:17].isascii() or not value[:17].isdigit():
        return False
    try:
        born = date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return False
    if born.year < 1900 or born > (today or date.today()):
        return False
    return value[17] == id_number_check_character(value[:17])


def luhn_check_digit(payload: str) -> str:
    """The Luhn digit to append to ``payload`` (the digits before it)."""
    total = 0
    # Doubling starts with the rightmost payload digit (the one next to the check digit).
    for position, digit in enumerate(reversed(payload)):
        value = int(digit)
        if position % 2 == 0:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return str((10 - total % 10) % 10)


def normalize_bank_card(value: str) -> str:
    """Cards are often typed in groups of four: spaces and dashes are dropped."""
    return value.replace(" ", "").replace("-", "")


def is_valid_bank_card(value: str) -> bool:
    """12 to 19 digits whose last digit is the Luhn check digit of the others."""
    card = normalize_bank_card(value)
    if not (12 <= len(card) <= 19) or not card.isascii() or not card.isdigit():
        return False
    return card[-1] == luhn_check_digit(card[:-1])
