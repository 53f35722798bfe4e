"""What the withdrawal use cases need from their process, in one object (built once per
service process from its runtime, or directly by tests)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from libs.common.db.engine import Database, Tx
from libs.common.ids import IdGenerator
from services.commission.models import CommissionTables, tables_for
from services.commission.withdrawals.crypto import PayeeCipher
from services.commission.withdrawals.payouts import PayoutProvider
from services.commission.withdrawals.payouts.manual import ManualProvider
from services.commission.withdrawals.payouts.wechat import (
    WechatTransferProvider,
    load_private_key,
    load_public_key,
)
from services.commission.withdrawals.settings import WithdrawalDeploySettings


@dataclass
class WithdrawalContext:
    db: Database
    ids: IdGenerator
    zone: ZoneInfo
    cipher: PayeeCipher
    # The commission business settings as a transaction sees them (withdrawal policy).
    settings_in_tx: Callable[[Tx], Awaitable[Any]]
    # By name: "manual" always; "wechat" when the merchant is configured.
    providers: dict[str, PayoutProvider] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.providers.setdefault("manual", ManualProvider())

    @property
    def tables(self) -> CommissionTables:
        return tables_for(self.zone.key)

    def provider_for(self, channel: str) -> PayoutProvider:
        """WeChat withdrawals go through the merchant transfer API when it is configured;
        everything else (bank, Alipay, manual) is paid by finance from the transfer file."""
        if channel == "wechat" and "wechat" in self.providers:
            return self.providers["wechat"]
        return self.providers["manual"]


def providers_from(settings: WithdrawalDeploySettings) -> dict[str, PayoutProvider]:
    providers: dict[str, PayoutProvider] = {"manual": ManualProvider()}
    if settings.wechat_pay_base_url and settings.wechat_pay_private_key:
        providers["wechat"] = WechatTransferProvider(
            base_url=settings.wechat_pay_base_url,
            mchid=settings.wechat_pay_mchid,
            appid=settings.wechat_pay_appid,
            serial_no=settings.wechat_pay_serial_no,
            private_key=load_private_key(settings.wechat_pay_private_key),
            transfer_scene_id=settings.wechat_pay_transfer_scene_id,
            platform_public_key=load_public_key(settings.wechat_pay_platform_public_key)
            if settings.wechat_pay_platform_public_key
            else None,
            platform_public_key_id=settings.wechat_pay_platform_public_key_id,
        )
    return providers
