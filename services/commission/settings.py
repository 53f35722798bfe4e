"""Reading the commission business settings inside a transaction."""

from __future__ import annotations

from libs.common.business_settings import SettingsStore
from libs.common.db.engine import Tx
from services.commission.compliance import CommissionSettings


async def load_settings(tx: Tx) -> CommissionSettings:
    """The settings as this transaction sees them (decisions inside a write)."""
    return await SettingsStore(CommissionSettings, tx.db).in_tx(tx)
