"""Individual income tax withheld on labor remuneration (劳务报酬, ARCHITECTURE §6).

All withdrawals of one person in one calendar month (business timezone) count as one
payment. Thresholds are in yuan; amounts here are fen (minor units of CNY):

- taxable income = income − 800 when income ≤ 4,000, else income × 80 %;
- tax = taxable × 20 % up to 20,000 taxable; × 30 % − 2,000 up to 50,000; × 40 % − 7,000 above;
- a withdrawal withholds the month-to-date tax minus what the month already withheld,
  each month-to-date figure rounded half up to the fen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from libs.common.money import round_half_up

FEN_PER_YUAN = 100
DEDUCTION_LIMIT_AMOUNT = 4_000 * FEN_PER_YUAN
FIXED_DEDUCTION_AMOUNT = 800 * FEN_PER_YUAN
# (upper bound of taxable income in fen or None, rate in percent, quick deduction in fen)
BRACKETS: tuple[tuple[int | None, int, int], ...] = (
    (20_000 * FEN_PER_YUAN, 20, 0),
    (50_000 * FEN_PER_YUAN, 30, 2_000 * FEN_PER_YUAN),
    (None, 40, 7_000 * FEN_PER_YUAN),
)


def taxable_income(income_amount: int) -> Decimal:
    """Taxable income of one month's labor remuneration, exact (may hold fractions of a fen)."""
    if income_amount < 0:
        raise ValueError("income is non-negative")
    if income_amount <= DEDUCTION_LIMIT_AMOUNT:
        return Decimal(max(income_amount - FIXED_DEDUCTION_AMOUNT, 0))
    return Decimal(income_amount) * Decimal("0.8")


def month_tax(income_amount: int) -> int:
    """The tax on a month's total labor remuneration, rounded half up to the fen."""
    taxable = taxable_income(income_amount)
    for upper, rate_percent, quick_deduction in BRACKETS:
        if upper is None or taxable <= upper:
            return round_half_up(taxable * rate_percent / 100 - quick_deduction)
    raise AssertionError("the last bracket has no upper bound")


def withholding(month_income_before: int, month_withheld_before: int, amount: int) -> int:
    """Tax to withhold on a new payment of ``amount`` in a month where ``month_income_before``
    was already paid (or promised) and ``month_withheld_before`` already withheld.

    Never negative: a month whose earlier withholding was too high (a paid withdrawal cannot
    be unpaid) is settled by the annual reconciliation, not by a negative withholding.
    """
    return max(month_tax(month_income_before + amount) - month_withheld_before, 0)


@dataclass(frozen=True)
class MonthPayment:
    """One withdrawal counted in a month: its gross amount, and its tax if already fixed
    (paid); ``None`` when the tax may still be recomputed."""

    amount: int
    fixed_tax_amount: int | None = None


def reallocate(payments: Sequence[MonthPayment]) -> list[int]:
    """The tax of each payment of a month, in request order, after one was taken out
    (a rejection or cancellation): paid ones keep what they withheld, the others withhold
    the month-to-date difference again."""
    income = withheld = 0
    taxes: list[int] = []
    for payment in payments:
        if payment.fixed_tax_amount is not None:
            tax = payment.fixed_tax_amount
        else:
            tax = withholding(income, withheld, payment.amount)
        income += payment.amount
        withheld += tax
        taxes.append(tax)
    return taxes
