"""Payee details (checked, encrypted at rest, masked), the monthly tax report and a
promoter's statement."""

from __future__ import annotations

import csv
import io

from sqlalchemy import select

from services.commission.withdrawals import reports, service
from services.commission.withdrawals.context import WithdrawalContext
from services.commission.withdrawals.models import payees
from services.commission.withdrawals.payee import PayeeInput
from tests.withdrawals.conftest import CARD, ID_NUMBER, OPENID, new_promoter
from tests.withdrawals.test_withdrawals import FINANCE, YUAN, refusal, withdraw


async def test_payee_is_encrypted_at_rest_and_masked_when_shown(wctx: WithdrawalContext) -> None:
    promoter = await new_promoter(wctx)
    async with wctx.db.read(may_lag=False) as conn:
        stored = dict(
            (await conn.execute(select(payees).where(payees.c.promoter_id == promoter)))
            .one()
            ._mapping
        )
    for value in ("张三丰", ID_NUMBER, CARD, OPENID, "zhang@example.com"):
        assert value not in str(stored)
    payee = await service.read_payee(wctx, promoter)
    assert payee.view(unmasked=True)["bank_card"] == CARD
    masked = payee.view(unmasked=False)
    assert (masked["real_name"], masked["id_number"], masked["bank_card"]) == (
        "张**",
        "1****************X",
        "尾号0128",
    )
    assert masked["wechat_openid"] == "oUp****S6o"
    assert masked["alipay_account"] == "z****@example.com"
    assert masked["channels"] == ["bank", "wechat", "alipay", "manual"]


async def test_payee_documents_are_checked(wctx: WithdrawalContext) -> None:
    promoter = await new_promoter(wctx)
    cases = [
        (PayeeInput("张三", "110101199003074518"), "payee.invalid_id_number"),
        (PayeeInput("张三", ID_NUMBER, bank_card="6222021234567890123"), "payee.invalid_bank_card"),
        (PayeeInput(" ", ID_NUMBER), "payee.invalid_real_name"),
        (PayeeInput("张三", ID_NUMBER, wechat_openid="bad openid!"), "payee.invalid_wechat_openid"),
    ]
    for payee, code in cases:
        error = await refusal(service.save_payee(wctx, promoter, payee))
        assert (error.status, error.code) == (400, code)
    # nothing was overwritten by the refused updates
    assert (await service.read_payee(wctx, promoter)).bank_card == CARD
    error = await refusal(service.read_payee(wctx, 999))
    assert (error.status, error.code) == (404, "payee.not_found")


async def test_monthly_tax_report(wctx: WithdrawalContext) -> None:
    promoter = await new_promoter(wctx, 10_000 * YUAN)
    other = await new_promoter(wctx, 10_000 * YUAN)
    paid = []
    for who, amount, key in ((promoter, 3_000, "a"), (promoter, 2_000, "b"), (other, 500, "c")):
        row = await withdraw(wctx, who, amount * YUAN, key=key)
        await service.approve(wctx, row["id"], FINANCE)
        paid.append(await service.mark_paid(wctx, row["id"], f"V-{key}", FINANCE))
    # a pending withdrawal is not in the report: nothing was withheld on it yet
    await withdraw(wctx, promoter, 100 * YUAN, key="pending")
    month = paid[0]["tax_month"]
    lines = list(csv.DictReader(io.StringIO(await reports.tax_report(wctx, month, unmasked=True))))
    by_promoter = {line["promoter_id"]: line for line in lines}
    assert by_promoter[str(promoter)] == {
        "promoter_id": str(promoter),
        "real_name": "张三丰",
        "id_number": ID_NUMBER,
        "month": month,
        "withdrawal_count": "2",
        "gross_amount": "500000",
        "taxable_amount": "400000",
        "withheld_amount": "80000",
        "gross": "5000.00",
        "taxable": "4000.00",
        "withheld": "800.00",
    }
    assert by_promoter[str(other)]["withheld_amount"] == "0"
    masked = await reports.tax_report(wctx, month, unmasked=False)
    assert ID_NUMBER not in masked and "张**" in masked
    error = await refusal(reports.tax_report(wctx, "2026-13", unmasked=True))
    assert (error.status, error.code) == (400, "request.bad_month")


async def test_statement_of_a_month(wctx: WithdrawalContext) -> None:
    promoter = await new_promoter(wctx, 1_000 * YUAN)
    row = await withdraw(wctx, promoter, 400 * YUAN)
    await service.approve(wctx, row["id"], FINANCE)
    await service.mark_paid(wctx, row["id"], "V1", FINANCE)
    result = await reports.statement(wctx, promoter, row["tax_month"])
    assert [e["kind"] for e in result["entries"]] == ["settle", "withdraw", "payout"]
    assert result["entries"][1]["effects"] == {"available": -400 * YUAN, "withdrawing": 400 * YUAN}
    assert result["opening"] == {
        "frozen_amount": 0,
        "available_amount": 0,
        "withdrawing_amount": 0,
        "paid_out_amount": 0,
    }
    assert result["closing"] == {
        "frozen_amount": 0,
        "available_amount": 600 * YUAN,
        "withdrawing_amount": 0,
        "paid_out_amount": 400 * YUAN,
    }
