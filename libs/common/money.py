"""Money rules (ARCHITECTURE §3): integers of the minor unit, rates in basis points, and one
rounding rule per use. No float anywhere on a money path."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal

BPS = 10_000
CURRENCY_EXPONENTS = {
    "CNY": 2,
    "USD": 2,
    "EUR": 2,
    "HKD": 2,
    "GBP": 2,
    "JPY": 0,
    "KRW": 0,
    "TWD": 2,
    "SGD": 2,
    "AUD": 2,
    "CAD": 2,
}


def apply_rate_floor(base_amount: int, rate_bps: int) -> int:
    """floor(base_amount × rate_bps / 10000): a commission line or a fee; the remainder
    stays with the platform."""
    if base_amount < 0 or rate_bps < 0:
        raise ValueError("amounts and rates are non-negative")
    return base_amount * rate_bps // BPS


def commission_line(base_amount: int, rate_bps: int, cap_amount: int | None = None) -> int:
    """min(floor(base × rate / 10000), cap) — the seed's ``amount*rate - cap`` was a bug."""
    line = apply_rate_floor(base_amount, rate_bps)
    return line if cap_amount is None else min(line, cap_amount)


def split_largest_remainder(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` over ``weights`` in proportion, floored, then hand the leftover units
    one each to the largest remainders (ties: the earlier item), so the parts sum exactly."""
    if total < 0 or any(w < 0 for w in weights):
        raise ValueError("total and weights are non-negative")
    weight_sum = sum(weights)
    if weight_sum == 0:
        if total:
            raise ValueError("cannot split a positive total over zero weights")
        return [0] * len(weights)
    if total > weight_sum:
        raise ValueError("total exceeds the weights")
    parts = [total * w // weight_sum for w in weights]
    remainders = [(total * w % weight_sum, -i) for i, w in enumerate(weights)]
    for _, negative_index in sorted(remainders, reverse=True)[: total - sum(parts)]:
        parts[-negative_index] += 1
    return parts


def round_half_up(value: Decimal) -> int:
    """A Decimal amount of minor units rounded half up to an integer (tax withholding)."""
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def to_minor_units(amount: str, currency: str) -> int:
    """A decimal string of major units (``"12.30"``) to minor units of ``currency``; refuses
    more decimals than the currency has."""
    exponent = CURRENCY_EXPONENTS.get(currency.upper())
    if exponent is None:
        raise ValueError(f"unsupported currency {currency}")
    value = Decimal(amount)
    scaled = value.scaleb(exponent)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{amount} has more decimals than {currency} allows")
    return int(scaled)
