"""Labor remuneration withholding (劳务报酬) with worked examples from the brackets."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.commission.withdrawals.tax import (
    MonthPayment,
    month_tax,
    reallocate,
    taxable_income,
    withholding,
)

YUAN = 100


def test_below_the_800_yuan_deduction_nothing_is_withheld() -> None:
    assert month_tax(500 * YUAN) == 0
    assert month_tax(800 * YUAN) == 0


def test_up_to_4000_yuan_800_is_deducted_then_20_percent() -> None:
    # 3,000 yuan: taxable 2,200, tax 440.
    assert taxable_income(3_000 * YUAN) == Decimal(2_200 * YUAN)
    assert month_tax(3_000 * YUAN) == 440 * YUAN
    # exactly 4,000: taxable 3,200, tax 640.
    assert month_tax(4_000 * YUAN) == 640 * YUAN


def test_above_4000_yuan_20_percent_is_deducted() -> None:
    # 5,000 yuan: taxable 4,000, tax 800.
    assert month_tax(5_000 * YUAN) == 800 * YUAN
    # 25,000 yuan: taxable 20,000, still the 20% bracket: 4,000.
    assert month_tax(25_000 * YUAN) == 4_000 * YUAN


def test_second_bracket_30_percent_minus_2000() -> None:
    # 30,000 yuan: taxable 24,000 → 24,000 × 30% − 2,000 = 5,200.
    assert month_tax(30_000 * YUAN) == 5_200 * YUAN
    # 62,500 yuan: taxable 50,000 (top of the bracket) → 13,000.
    assert month_tax(62_500 * YUAN) == 13_000 * YUAN


def test_third_bracket_40_percent_minus_7000() -> None:
    # 80,000 yuan: taxable 64,000 → 64,000 × 40% − 7,000 = 18,600.
    assert month_tax(80_000 * YUAN) == 18_600 * YUAN
    # 100,000 yuan: taxable 80,000 → 25,000.
    assert month_tax(100_000 * YUAN) == 25_000 * YUAN


def test_rounding_is_half_up_to_the_fen() -> None:
    # 1,000.03 yuan: taxable 200.03 → 40.006 yuan = 4000.6 fen → 4001 fen.
    assert month_tax(100_003) == 4_001
    # 1,000.02 yuan: 4000.4 fen → 4000 fen.
    assert month_tax(100_002) == 4_000
    # 4,000.03 yuan: taxable 3,200.024 yuan → 640.0048 yuan = 64000.48 fen → 64000.
    assert month_tax(400_003) == 64_000


def test_two_withdrawals_in_one_month_count_as_one_payment() -> None:
    # 3,000 then 2,000 yuan: the first withholds 440; the month is then 5,000 (tax 800),
    # so the second withholds 800 − 440 = 360, not the 240 it would owe alone.
    first = withholding(0, 0, 3_000 * YUAN)
    second = withholding(3_000 * YUAN, first, 2_000 * YUAN)
    assert (first, second) == (440 * YUAN, 360 * YUAN)
    assert first + second == month_tax(5_000 * YUAN)


def test_two_small_withdrawals_crossing_the_threshold() -> None:
    # 600 yuan (under 800: nothing), then 600 more: 1,200 → taxable 400 → 80 yuan.
    first = withholding(0, 0, 600 * YUAN)
    second = withholding(600 * YUAN, first, 600 * YUAN)
    assert (first, second) == (0, 80 * YUAN)


def test_reallocation_after_the_first_is_taken_out() -> None:
    # Two pending withdrawals of 3,000 (440) and 2,000 (360); the first is rejected: the
    # second alone owes 2,000 − 800 = 1,200 × 20% = 240.
    assert reallocate([MonthPayment(2_000 * YUAN)]) == [240 * YUAN]
    # A paid one keeps what it withheld; the pending one after it withholds the difference.
    assert reallocate([MonthPayment(3_000 * YUAN, 440 * YUAN), MonthPayment(2_000 * YUAN)]) == [
        440 * YUAN,
        360 * YUAN,
    ]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=20_000_000), min_size=1, max_size=6))
def test_month_to_date_withholding_sums_to_the_tax_of_the_month(amounts: list[int]) -> None:
    income = withheld = 0
    for amount in amounts:
        tax = withholding(income, withheld, amount)
        assert 0 <= tax <= amount
        income += amount
        withheld += tax
    assert withheld == month_tax(income)
