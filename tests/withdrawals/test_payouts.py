"""Paying approved withdrawals: the manual provider (transfer file, voucher) and WeChat Pay
merchant transfers against a local fake that verifies our signatures."""

from __future__ import annotations

import csv
import io

from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from libs.common.audit import audit_log
from libs.common.errors import TuikeError
from services.commission.compliance import CommissionSettings
from services.commission.ledger import verify
from services.commission.withdrawals import service
from services.commission.withdrawals.context import WithdrawalContext
from services.commission.withdrawals.payouts import PayoutRequest
from services.commission.withdrawals.payouts.wechat import WechatTransferProvider
from tests.withdrawals.conftest import CARD, OPENID, Settings, new_promoter
from tests.withdrawals.fake_wechat import FakeWechatPay
from tests.withdrawals.test_withdrawals import FINANCE, YUAN, balances, events, refusal, withdraw


async def test_manual_payout_transfer_file_then_mark_paid(
    wctx: WithdrawalContext, settings: Settings
) -> None:
    settings.value = CommissionSettings(withdraw_fee_bps=100)
    promoter = await new_promoter(wctx, 5_000 * YUAN)
    row = await withdraw(wctx, promoter, 3_000 * YUAN, channel="bank")
    approved = await service.approve(wctx, row["id"], FINANCE)
    assert approved["status"] == "approved"

    lines = [
        line
        for line in csv.DictReader(io.StringIO(await service.transfer_file(wctx, "bank")))
        if line["promoter_id"] == str(promoter)
    ]
    assert lines == [
        {
            "payout_id": f"W{row['id']}A1",
            "withdrawal_id": str(row["id"]),
            "promoter_id": str(promoter),
            "channel": "bank",
            "payee_name": "张三丰",
            "account": CARD,
            "bank_name": "中国工商银行",
            "amount": "2530.00",
            "amount_minor": "253000",
            "currency": "CNY",
        }
    ]
    platform_before = (await verify(wctx.db, wctx.tables)).platform_balances
    paid = await service.mark_paid(wctx, row["id"], "ICBC-20261126-0001", FINANCE)
    assert (paid["status"], paid["payout_reference"]) == ("paid", "ICBC-20261126-0001")
    assert await balances(wctx, promoter) == {
        "available": 2_000 * YUAN,
        "withdrawing": 0,
        "paid_out": 2_530 * YUAN,
    }
    report = await verify(wctx.db, wctx.tables)
    assert report.ok, report
    for account, amount in (("platform:tax_payable", 440 * YUAN), ("platform:fee_income", 3_000)):
        assert report.platform_balances[account] - platform_before.get(account, 0) == amount
    # nothing of this promoter is waiting for the bank any more
    waiting = csv.DictReader(io.StringIO(await service.transfer_file(wctx, None)))
    assert [line for line in waiting if line["promoter_id"] == str(promoter)] == []
    error = await refusal(service.mark_paid(wctx, row["id"], "again", FINANCE))
    assert (error.status, error.code) == (409, "withdrawal.not_payable")
    types = [t for t, _ in await events(wctx, promoter)]
    assert types == ["withdrawal.requested", "withdrawal.approved", "withdrawal.paid"]
    async with wctx.db.read(may_lag=False) as conn:
        actions = [
            r[0]
            for r in await conn.execute(
                select(audit_log.c.action)
                .where(audit_log.c.target_id == str(row["id"]))
                .order_by(audit_log.c.id)
            )
        ]
    assert actions == ["withdrawal.approve", "withdrawal.mark_paid"]


async def test_manual_payout_bounces_then_is_retried(wctx: WithdrawalContext) -> None:
    promoter = await new_promoter(wctx, 500 * YUAN)
    row = await withdraw(wctx, promoter, 500 * YUAN, channel="alipay")
    await service.approve(wctx, row["id"], FINANCE)
    failed = await service.mark_failed(wctx, row["id"], "account closed", FINANCE)
    assert (failed["status"], failed["reason"]) == ("failed", "account closed")
    # the money stays set aside while the payout is sorted out
    assert (await balances(wctx, promoter))["withdrawing"] == 500 * YUAN
    retried = await service.retry_payout(wctx, row["id"], FINANCE)
    assert (retried["status"], retried["payout_id"]) == ("approved", f"W{row['id']}A2")
    paid = await service.mark_paid(wctx, row["id"], "ALIPAY-2", FINANCE)
    assert paid["status"] == "paid"
    assert (await balances(wctx, promoter))["paid_out"] == paid["net_amount"]


async def test_rejecting_after_a_failed_payout_returns_the_money(wctx: WithdrawalContext) -> None:
    promoter = await new_promoter(wctx, 500 * YUAN)
    row = await withdraw(wctx, promoter, 500 * YUAN)
    await service.approve(wctx, row["id"], FINANCE)
    await service.mark_failed(wctx, row["id"], "card frozen", FINANCE)
    rejected = await service.reject(wctx, row["id"], "payee cannot be paid", FINANCE)
    assert rejected["status"] == "rejected"
    assert await balances(wctx, promoter) == {
        "available": 500 * YUAN,
        "withdrawing": 0,
        "paid_out": 0,
    }


async def test_wechat_transfer_is_signed_and_paid(
    wctx: WithdrawalContext, fake_wechat: FakeWechatPay
) -> None:
    promoter = await new_promoter(wctx, 300 * YUAN)
    before = fake_wechat.paid_total(OPENID)
    rejected_before = fake_wechat.rejected_signatures
    row = await withdraw(wctx, promoter, 300 * YUAN, channel="wechat")
    paid = await service.approve(wctx, row["id"], FINANCE)
    assert (paid["status"], paid["payout_provider"]) == ("paid", "wechat")
    assert paid["payout_reference"] == fake_wechat.bills[f"W{row['id']}A1"]["transfer_bill_no"]
    # under 800 yuan a month nothing is withheld
    assert fake_wechat.paid_total(OPENID) - before == paid["net_amount"] == 300 * YUAN
    assert fake_wechat.rejected_signatures == rejected_before
    assert (await balances(wctx, promoter))["paid_out"] == paid["net_amount"]


async def test_failed_wechat_payout_is_retried_without_paying_twice(
    wctx: WithdrawalContext, fake_wechat: FakeWechatPay
) -> None:
    promoter = await new_promoter(wctx, 300 * YUAN)
    before = fake_wechat.paid_total(OPENID)
    row = await withdraw(wctx, promoter, 200 * YUAN, channel="wechat")
    fake_wechat.next_transfer.append("fail")
    failed = await service.approve(wctx, row["id"], FINANCE)
    assert (failed["status"], failed["reason"]) == ("failed", "PAYEE_ACCOUNT_ABNORMAL")
    assert fake_wechat.paid_total(OPENID) == before
    retried = await service.retry_payout(wctx, row["id"], FINANCE)
    assert (retried["status"], retried["payout_id"]) == ("paid", f"W{row['id']}A2")
    # retrying a paid withdrawal is refused and pays nothing
    error = await refusal(service.retry_payout(wctx, row["id"], FINANCE))
    assert (error.status, error.code) == (409, "withdrawal.not_retryable")
    assert fake_wechat.paid_total(OPENID) - before == retried["net_amount"]
    assert [t for t, _ in await events(wctx, promoter)] == [
        "withdrawal.requested",
        "withdrawal.approved",
        "withdrawal.failed",
        "withdrawal.paid",
    ]


async def test_lost_answer_is_asked_again_with_the_same_payout_id(
    wctx: WithdrawalContext, fake_wechat: FakeWechatPay
) -> None:
    promoter = await new_promoter(wctx, 300 * YUAN)
    before = fake_wechat.paid_total(OPENID)
    row = await withdraw(wctx, promoter, 250 * YUAN, channel="wechat")
    fake_wechat.next_transfer.append("lose_answer")
    unknown = await service.approve(wctx, row["id"], FINANCE)
    # WeChat paid but we never heard: still approved, same payout id, money still withdrawing
    assert (unknown["status"], unknown["payout_id"]) == ("approved", f"W{row['id']}A1")
    assert unknown["reason"].startswith("payout outcome unknown")
    assert fake_wechat.paid_total(OPENID) - before == unknown["net_amount"]
    again = await service.retry_payout(wctx, row["id"], FINANCE)
    assert (again["status"], again["payout_id"]) == ("paid", f"W{row['id']}A1")
    assert again["reason"] is None
    assert fake_wechat.paid_total(OPENID) - before == again["net_amount"]


async def test_provider_down_keeps_the_withdrawal_approved(
    wctx: WithdrawalContext, fake_wechat: FakeWechatPay
) -> None:
    promoter = await new_promoter(wctx, 300 * YUAN)
    row = await withdraw(wctx, promoter, 150 * YUAN, channel="wechat")
    fake_wechat.next_transfer.append("down")
    assert (await service.approve(wctx, row["id"], FINANCE))["status"] == "approved"
    assert (await service.retry_payout(wctx, row["id"], FINANCE))["status"] == "paid"


async def test_a_wrong_signature_is_refused_by_wechat(
    fake_wechat_server: tuple[FakeWechatPay, str],
) -> None:
    fake, url = fake_wechat_server
    impostor = WechatTransferProvider(
        base_url=url,
        mchid="1900000109",
        appid="wxd678efh567hg6787",
        serial_no="5157F09EFDC",
        private_key=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )
    rejected = fake.rejected_signatures
    result = await impostor.send(
        PayoutRequest("W1A1", 1, 2, "wechat", 100, "CNY", OPENID, "张三", "test")
    )
    assert result.state == "failed" and "SIGN_ERROR" in (result.failure_reason or "")
    assert fake.rejected_signatures == rejected + 1
    assert "W1A1" not in fake.bills


async def test_only_manual_payouts_are_marked_by_hand(
    wctx: WithdrawalContext, fake_wechat: FakeWechatPay
) -> None:
    promoter = await new_promoter(wctx, 300 * YUAN)
    row = await withdraw(wctx, promoter, 150 * YUAN, channel="wechat")
    fake_wechat.next_transfer.append("down")
    await service.approve(wctx, row["id"], FINANCE)
    error = await refusal(service.mark_paid(wctx, row["id"], "v", FINANCE))
    assert (error.status, error.code) == (400, "withdrawal.not_manual")
    assert isinstance(error, TuikeError)


async def test_large_transfer_carries_the_encrypted_payee_name(
    wctx: WithdrawalContext, fake_wechat: FakeWechatPay
) -> None:
    promoter = await new_promoter(wctx, 3_000 * YUAN)
    row = await withdraw(wctx, promoter, 3_000 * YUAN, channel="wechat")
    paid = await service.approve(wctx, row["id"], FINANCE)
    assert paid["status"] == "paid" and paid["net_amount"] == 2_560 * YUAN
    assert fake_wechat.bills[f"W{row['id']}A1"]["user_name"] == "张三丰"


async def test_an_answer_without_wechats_signature_is_no_answer(
    wctx: WithdrawalContext, fake_wechat: FakeWechatPay
) -> None:
    promoter = await new_promoter(wctx, 300 * YUAN)
    before = fake_wechat.paid_total(OPENID)
    row = await withdraw(wctx, promoter, 100 * YUAN, channel="wechat")
    fake_wechat.forge_next_answer = True
    # the transfer happened, but the forged answer is not believed: outcome unknown
    unknown = await service.approve(wctx, row["id"], FINANCE)
    assert (unknown["status"], unknown["payout_id"]) == ("approved", f"W{row['id']}A1")
    paid = await service.retry_payout(wctx, row["id"], FINANCE)
    assert (paid["status"], paid["payout_id"]) == ("paid", f"W{row['id']}A1")
    assert fake_wechat.paid_total(OPENID) - before == 100 * YUAN


async def test_large_transfer_without_the_wechat_public_key_fails_cleanly(
    fake_wechat_server: tuple[FakeWechatPay, str], merchant_key: rsa.RSAPrivateKey
) -> None:
    fake, url = fake_wechat_server
    provider = WechatTransferProvider(
        base_url=url,
        mchid="1900000109",
        appid="wxd678efh567hg6787",
        serial_no="5157F09EFDC",
        private_key=merchant_key,
    )
    result = await provider.send(
        PayoutRequest("W9A1", 9, 2, "wechat", 200_000, "CNY", OPENID, "张三", "test")
    )
    assert result.state == "failed" and "public key" in (result.failure_reason or "")
    assert "W9A1" not in fake.bills
