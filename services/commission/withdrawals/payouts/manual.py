"""The ``manual`` payout provider: finance pays by bank transfer (or in the Alipay / WeChat
merchant console) from an exported file, then marks each withdrawal paid with the bank's
voucher reference. Nothing is sent anywhere: a payout is ``processing`` until a person says
how it ended."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass

from services.commission.withdrawals.payouts import PayoutRequest, PayoutResult


class ManualProvider:
    name = "manual"

    async def send(self, request: PayoutRequest) -> PayoutResult:
        return PayoutResult(state="processing")

    async def query(self, payout_id: str) -> PayoutResult:
        return PayoutResult(state="processing")


@dataclass(frozen=True)
class TransferLine:
    payout_id: str
    withdrawal_id: int
    promoter_id: int
    channel: str
    real_name: str
    destination: str
    bank_name: str
    net_amount: int
    currency: str


TRANSFER_FILE_COLUMNS = (
    "payout_id",
    "withdrawal_id",
    "promoter_id",
    "channel",
    "payee_name",
    "account",
    "bank_name",
    "amount",
    "amount_minor",
    "currency",
)


def spreadsheet_safe(value: str) -> str:
    """A cell starting with = + - @ would run as a formula in a spreadsheet program."""
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


def _major(amount: int) -> str:
    sign = "-" if amount < 0 else ""
    whole, fen = divmod(abs(amount), 100)
    return f"{sign}{whole}.{fen:02d}"


def transfer_file(lines: Iterable[TransferLine]) -> str:
    """The bank transfer file (CSV, UTF-8): one line per approved withdrawal, with the payout
    id as the transfer's reference so the bank statement matches back to it. ``amount`` in
    yuan for the bank, ``amount_minor`` in fen for machines."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(TRANSFER_FILE_COLUMNS)
    for line in lines:
        writer.writerow(
            [
                line.payout_id,
                str(line.withdrawal_id),
                str(line.promoter_id),
                line.channel,
                spreadsheet_safe(line.real_name),
                spreadsheet_safe(line.destination),
                spreadsheet_safe(line.bank_name),
                _major(line.net_amount),
                str(line.net_amount),
                line.currency,
            ]
        )
    return buffer.getvalue()


format_major = _major
