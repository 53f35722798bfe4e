"""What withdrawals are configured by.

Deploy-time (environment, ``TUIKE_`` prefix): the payee encryption key and the WeChat Pay
merchant credentials. Business settings (``GET/PUT /api/v1/settings/commission``, the commission
service's ``CommissionSettings``): minimum, fee, daily limit and the tax withholding switch;
:class:`WithdrawalPolicy` reads them, with defaults for any the model does not have.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from services.commission.withdrawals.crypto import PayeeCipher

log = logging.getLogger("tuike.withdrawals")

CHANNELS = ("bank", "wechat", "alipay", "manual")


class WithdrawalDeploySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUIKE_", extra="ignore")

    # base64 or hex of 32 bytes; unset = a development key derived from the stack's secret.
    payee_encryption_key: str | None = None
    internal_api_key: str | None = None
    bootstrap_admin_key: str | None = None
    # WeChat Pay merchant transfer (商家转账); unset base URL = the channel pays manually.
    wechat_pay_base_url: str | None = None
    wechat_pay_mchid: str = ""
    wechat_pay_appid: str = ""
    wechat_pay_serial_no: str = ""
    # PEM of the merchant API private key (apiclient_key.pem), or a path to it.
    wechat_pay_private_key: str = ""
    wechat_pay_transfer_scene_id: str = "1000"
    # WeChat Pay's public key (微信支付公钥, PEM or a path) and its id (PUB_KEY_ID_…): verifies
    # WeChat's answers and encrypts the payee name; without it answers are not verified.
    wechat_pay_platform_public_key: str = ""
    wechat_pay_platform_public_key_id: str = ""

    def cipher(self) -> PayeeCipher:
        if self.payee_encryption_key:
            return PayeeCipher.from_setting(self.payee_encryption_key)
        # The bootstrap admin key first: `make run` keeps it across restarts (dev-admin-key by
        # default) but makes a new internal key at every start, which would leave payee
        # details saved before a restart unreadable.
        secret = self.bootstrap_admin_key or self.internal_api_key or "tuike-local"
        log.warning("TUIKE_PAYEE_ENCRYPTION_KEY unset: using a development key for payee data")
        return PayeeCipher.derived(secret)


_DEFAULTS: dict[str, Any] = {
    "withdraw_min_amount": 100,
    "withdraw_fee_bps": 0,
    # 0 = no daily limit.
    "withdraw_daily_limit_amount": 5_000_000,
    "withdraw_channels": list(CHANNELS),
    "tax_withholding": "cn_labor",
}


@dataclass(frozen=True)
class WithdrawalPolicy:
    min_amount: int
    fee_bps: int
    daily_limit_amount: int
    channels: tuple[str, ...]
    tax_withholding: str

    @classmethod
    def from_settings(cls, settings: Any) -> WithdrawalPolicy:
        """From the commission settings in force; a field it does not (yet) have keeps its
        default. ``compliance_profile = global`` turns the China withholding off unless
        ``tax_withholding`` says otherwise explicitly."""

        def read(name: str) -> Any:
            return getattr(settings, name, _DEFAULTS[name])

        withholding = read("tax_withholding")
        if "tax_withholding" not in getattr(settings, "model_fields_set", {"tax_withholding"}):
            if getattr(settings, "compliance_profile", "cn") == "global":
                withholding = "none"
        return cls(
            min_amount=int(read("withdraw_min_amount")),
            fee_bps=int(read("withdraw_fee_bps")),
            daily_limit_amount=int(read("withdraw_daily_limit_amount")),
            channels=tuple(read("withdraw_channels")),
            tax_withholding=str(withholding),
        )
