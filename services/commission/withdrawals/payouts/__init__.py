"""The payout provider interface: how an approved withdrawal's money leaves the platform.

A provider gets a :class:`PayoutRequest` whose ``payout_id`` is the idempotency key at the
provider (WeChat's ``out_bill_no``): sending the same payout id twice never pays twice, so a
request whose outcome is unknown (timeout, 5xx) is retried with the same id. Only an attempt
the provider reports as definitively failed is retried under a new id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

PayoutState = Literal["paid", "processing", "failed"]
MAX_PAYOUT_ID_LENGTH = 32


def payout_id_for(withdrawal_id: int, attempt: int) -> str:
    """``W<withdrawal id>A<attempt>``: at most 1 + 19 + 1 + 4 characters, within WeChat's 32,
    letters and digits only as ``out_bill_no`` requires."""
    payout_id = f"W{withdrawal_id}A{attempt}"
    if len(payout_id) > MAX_PAYOUT_ID_LENGTH:
        raise ValueError("payout id too long")
    return payout_id


@dataclass(frozen=True)
class PayoutRequest:
    payout_id: str
    withdrawal_id: int
    promoter_id: int
    channel: str
    amount: int  # the net amount the payee receives, minor units
    currency: str
    destination: str  # openid, card number or account, decrypted
    real_name: str
    remark: str


@dataclass(frozen=True)
class PayoutResult:
    state: PayoutState
    reference: str | None = None  # the provider's bill number or a voucher
    failure_reason: str | None = None


class PayoutUnknown(Exception):
    """The provider could not be asked or did not answer clearly: the outcome is unknown,
    so the same payout id must be used again (never a new one)."""


class PayoutProvider(Protocol):
    name: str

    async def send(self, request: PayoutRequest) -> PayoutResult:
        """Start (or, for the same payout id, look up) a payout; raises PayoutUnknown."""
        ...

    async def query(self, payout_id: str) -> PayoutResult:
        """The current state of a payout sent before; raises PayoutUnknown."""
        ...
