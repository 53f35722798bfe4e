"""The arithmetic of commission lines (ARCHITECTURE §3, §6): pure functions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.money import apply_rate_floor, commission_line
from services.commission.compliance import LevelTerms


def line_amount(terms: LevelTerms, base_amount: int, quantity: int, item_paid_amount: int) -> int:
    """One line (item × level) on the amount still paid.

    A rate: floor(base × rate_bps / 10000), then min(…, cap_amount). A fixed amount: per unit
    × quantity, scaled by the share of the item still paid (floored), so a full refund leaves 0.
    """
    if terms.fixed_amount is not None:
        if item_paid_amount <= 0:
            return 0
        return terms.fixed_amount * quantity * base_amount // item_paid_amount
    assert terms.rate_bps is not None
    return commission_line(base_amount, terms.rate_bps, terms.cap_amount)


@dataclass(frozen=True)
class ItemLine:
    level: int
    amount: int
    clamped: bool


def item_lines(
    terms: list[LevelTerms],
    base_amount: int,
    quantity: int,
    item_paid_amount: int,
    total_cap_bps: int,
) -> list[ItemLine]:
    """Every level's line of one item, clamped so that together they never exceed the
    profile's total cap of the base (in level order: the nearest level is served first).

    Rates were checked against the cap when the rule was saved (a sum of floors never
    exceeds the floor of the sum), so only fixed amounts can be clamped here.
    """
    allowance = apply_rate_floor(base_amount, total_cap_bps)
    raw = [
        (t.level, line_amount(t, base_amount, quantity, item_paid_amount))
        for t in sorted(terms, key=lambda t: t.level)
    ]
    if sum(amount for _, amount in raw) <= allowance:
        return [ItemLine(level, amount, False) for level, amount in raw]
    lines = []
    for level, amount in raw:
        granted = min(amount, allowance)
        allowance -= granted
        lines.append(ItemLine(level, granted, granted != amount))
    return lines
