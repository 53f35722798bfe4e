"""Payee details of a promoter: who the money goes to, checked, encrypted at rest, masked
when shown to a caller without the right to read personal data."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from libs.common.db.engine import Tx
from libs.common.db.sql import upsert_replace
from libs.common.errors import BadRequest, Conflict, NotFound
from libs.common.masking import mask_account, mask_bank_card, mask_id_number, mask_name
from libs.common.messaging.outbox import utcnow
from services.commission.withdrawals.crypto import PayeeCipher
from services.commission.withdrawals.identity import (
    is_valid_bank_card,
    is_valid_id_number,
    normalize_bank_card,
    normalize_id_number,
)
from services.commission.withdrawals.models import payees

ENCRYPTED_FIELDS = ("real_name", "id_number", "bank_card", "wechat_openid", "alipay_account")
# Where each channel pays to; "manual" needs only a known payee (finance pays by other means).
CHANNEL_DESTINATION = {"bank": "bank_card", "wechat": "wechat_openid", "alipay": "alipay_account"}
_OPENID = re.compile(r"^[A-Za-z0-9_-]{6,128}$")


@dataclass(frozen=True)
class PayeeInput:
    real_name: str
    id_number: str
    bank_card: str | None = None
    bank_name: str | None = None
    wechat_openid: str | None = None
    alipay_account: str | None = None


@dataclass(frozen=True)
class Payee:
    promoter_id: int
    real_name: str
    id_number: str
    bank_card: str | None
    bank_name: str | None
    wechat_openid: str | None
    alipay_account: str | None
    created_at: datetime
    updated_at: datetime

    def destination(self, channel: str) -> str | None:
        field = CHANNEL_DESTINATION.get(channel)
        return self.real_name if field is None else getattr(self, field)

    def view(self, *, unmasked: bool) -> dict[str, Any]:
        """As shown over the API: masked unless the caller may read personal data."""
        if unmasked:
            shown = {f: getattr(self, f) for f in ENCRYPTED_FIELDS}
        else:
            shown = {
                "real_name": mask_name(self.real_name),
                "id_number": mask_id_number(self.id_number),
                "bank_card": mask_bank_card(self.bank_card),
                "wechat_openid": mask_account(self.wechat_openid),
                "alipay_account": mask_account(self.alipay_account),
            }
        return {
            "promoter_id": self.promoter_id,
            **shown,
            "bank_name": self.bank_name,
            "channels": [c for c in ("bank", "wechat", "alipay", "manual") if self.destination(c)],
            "masked": not unmasked,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


def _clean(value: str | None) -> str | None:
    value = value.strip() if value is not None else None
    return value or None


def validate(payee: PayeeInput) -> PayeeInput:
    """Refuse a payee whose documents cannot be right (400, nothing saved)."""
    real_name = payee.real_name.strip()
    if not 1 <= len(real_name) <= 64:
        raise BadRequest("the real name is 1 to 64 characters", code="payee.invalid_real_name")
    if not is_valid_id_number(payee.id_number):
        raise BadRequest(
            "the ID number is not a valid 18-character resident ID (check digit, birth date)",
            code="payee.invalid_id_number",
        )
    bank_card = _clean(payee.bank_card)
    if bank_card is not None:
        bank_card = normalize_bank_card(bank_card)
        if not is_valid_bank_card(bank_card):
            raise BadRequest(
                "the bank card number is not 12-19 digits with a valid Luhn check digit",
                code="payee.invalid_bank_card",
            )
    openid = _clean(payee.wechat_openid)
    if openid is not None and not _OPENID.match(openid):
        raise BadRequest("the WeChat openid is malformed", code="payee.invalid_wechat_openid")
    alipay = _clean(payee.alipay_account)
    if alipay is not None and not 3 <= len(alipay) <= 100:
        raise BadRequest("the Alipay account is malformed", code="payee.invalid_alipay_account")
    return PayeeInput(
        real_name=real_name,
        id_number=normalize_id_number(payee.id_number),
        bank_card=bank_card,
        bank_name=_clean(payee.bank_name),
        wechat_openid=openid,
        alipay_account=alipay,
    )


async def put_payee(tx: Tx, cipher: PayeeCipher, promoter_id: int, payee: PayeeInput) -> Payee:
    """Replace the promoter's payee details (a field left out is removed)."""
    payee = validate(payee)
    now = utcnow()
    conn = await tx.main()
    existing = await conn.scalar(
        select(payees.c.created_at).where(payees.c.promoter_id == promoter_id)
    )
    values: dict[str, Any] = {
        "promoter_id": promoter_id,
        "bank_name": payee.bank_name,
        "created_at": existing or now,
        "updated_at": now,
    }
    for field in ENCRYPTED_FIELDS:
        plain = getattr(payee, field)
        values[field] = (
            None if plain is None else cipher.encrypt(plain, promoter_id=promoter_id, field=field)
        )
    replace = [c for c in values if c not in ("promoter_id", "created_at")]
    await upsert_replace(conn, payees, [values], ["promoter_id"], replace)
    return Payee(
        promoter_id=promoter_id,
        real_name=payee.real_name,
        id_number=payee.id_number,
        bank_card=payee.bank_card,
        bank_name=payee.bank_name,
        wechat_openid=payee.wechat_openid,
        alipay_account=payee.alipay_account,
        created_at=values["created_at"],
        updated_at=now,
    )


async def load_payee(conn: AsyncConnection, cipher: PayeeCipher, promoter_id: int) -> Payee | None:
    row = (await conn.execute(select(payees).where(payees.c.promoter_id == promoter_id))).first()
    if row is None:
        return None
    data = row._mapping
    plain = {
        field: None
        if data[field] is None
        else cipher.decrypt(data[field], promoter_id=promoter_id, field=field)
        for field in ENCRYPTED_FIELDS
    }
    return Payee(
        promoter_id=promoter_id,
        real_name=str(plain["real_name"]),
        id_number=str(plain["id_number"]),
        bank_card=plain["bank_card"],
        bank_name=data["bank_name"],
        wechat_openid=plain["wechat_openid"],
        alipay_account=plain["alipay_account"],
        created_at=data["created_at"],
        updated_at=data["updated_at"],
    )


async def get_payee(conn: AsyncConnection, cipher: PayeeCipher, promoter_id: int) -> Payee:
    payee = await load_payee(conn, cipher, promoter_id)
    if payee is None:
        raise NotFound("no payee details on file", code="payee.not_found")
    return payee


async def require_destination(
    conn: AsyncConnection, cipher: PayeeCipher, promoter_id: int, channel: str
) -> Payee:
    """The payee, if the channel's destination is on file (409 otherwise)."""
    payee = await load_payee(conn, cipher, promoter_id)
    if payee is None:
        raise Conflict("add payee details before withdrawing", code="withdrawal.payee_missing")
    if not payee.destination(channel):
        raise Conflict(
            f"no {CHANNEL_DESTINATION.get(channel, channel)} on file for channel {channel}",
            code="withdrawal.destination_missing",
            details={"channel": channel},
        )
    return payee
