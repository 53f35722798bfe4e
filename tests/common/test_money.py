from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.common.money import (
    commission_line,
    round_half_up,
    split_largest_remainder,
    to_minor_units,
)


def test_commission_line_floors_and_caps_with_min() -> None:
    assert commission_line(9999, 1000) == 999  # 999.9 floored
    assert commission_line(100_000, 1000, cap_amount=5000) == 5000  # min, not amount*rate - cap
    assert commission_line(10_000, 1000, cap_amount=5000) == 1000


@given(st.integers(0, 10**12), st.integers(0, 10_000), st.one_of(st.none(), st.integers(0, 10**9)))
def test_commission_line_never_exceeds_base_or_cap(base: int, rate: int, cap: int | None) -> None:
    line = commission_line(base, rate, cap)
    assert 0 <= line <= base
    if cap is not None:
        assert line <= cap


def test_split_largest_remainder_worked_example() -> None:
    # 100 fen over items paid 1/3 each: 33, 33, 33 and one fen to the largest remainder (first).
    assert split_largest_remainder(100, [300, 300, 300]) == [34, 33, 33]
    assert split_largest_remainder(10, [1, 2, 7]) == [1, 2, 7]
    # exact 1, 1.5, 2.5: the leftover fen goes to the tied remainder that comes first
    assert split_largest_remainder(5, [2, 3, 5]) == [1, 2, 2]


@given(st.lists(st.integers(0, 10**7), min_size=1, max_size=12), st.data())
def test_split_sums_exactly_and_never_exceeds_a_weight(
    weights: list[int], data: st.DataObject
) -> None:
    total = data.draw(st.integers(0, sum(weights)))
    if sum(weights) == 0:
        assert split_largest_remainder(0, weights) == [0] * len(weights)
        return
    parts = split_largest_remainder(total, weights)
    assert sum(parts) == total
    assert all(0 <= p <= w for p, w in zip(parts, weights, strict=True))


def test_half_up_and_minor_units() -> None:
    assert round_half_up(Decimal("12.5")) == 13
    assert round_half_up(Decimal("12.49")) == 12
    assert to_minor_units("12.30", "CNY") == 1230
    assert to_minor_units("500", "JPY") == 500
    with pytest.raises(ValueError):
        to_minor_units("1.234", "CNY")
    with pytest.raises(ValueError):
        to_minor_units("1", "XXX")
