"""Withdrawal tests run the real use cases on a real database of each backend, with the
commission service's own ledger; the only stand-in is WeChat Pay itself (fake_wechat.py).

The schema (16 account shards, monthly ledger tables, triggers) is built once per backend and
shared: every test works on its own new promoters, and asserts only on what is theirs."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from libs.common.db.engine import Database, Tx
from libs.common.db.migrations import migrate
from libs.common.ids import IdGenerator
from services.commission.compliance import CommissionSettings
from services.commission.ledger import PLATFORM_EXPENSE, Transfer, post_transfers, promoter_account
from services.commission.migrations import MIGRATIONS, ensure_monthly_tables
from services.commission.models import tables_for
from services.commission.withdrawals.context import WithdrawalContext
from services.commission.withdrawals.crypto import PayeeCipher
from services.commission.withdrawals.payee import PayeeInput
from services.commission.withdrawals.payouts.wechat import WechatTransferProvider
from services.commission.withdrawals.service import save_payee
from tests.conftest import Backend
from tests.withdrawals.fake_wechat import FakeServer, FakeWechatPay

ZONE = ZoneInfo("Asia/Shanghai")
ID_NUMBER = "11010519491231002X"
CARD = "6222021234567890128"
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


@dataclass
class Settings:
    """The commission settings the tests put in force."""

    value: CommissionSettings

    async def in_tx(self, tx: Tx) -> Any:
        return self.value


@pytest.fixture(scope="session")
def merchant_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def fake_wechat_server(merchant_key: rsa.RSAPrivateKey) -> Iterator[tuple[FakeWechatPay, str]]:
    fake = FakeWechatPay(merchant_key.public_key(), mchid="1900000109", serial_no="5157F09EFDC")
    with FakeServer(fake.app()) as server:
        yield fake, server.url


@pytest.fixture
def fake_wechat(fake_wechat_server: tuple[FakeWechatPay, str]) -> FakeWechatPay:
    fake, _ = fake_wechat_server
    fake.next_transfer.clear()
    fake.forge_next_answer = False
    return fake


@pytest.fixture
def settings() -> Settings:
    return Settings(CommissionSettings())


async def _create_schema(backend: Backend, workdir: Path) -> str:
    if backend.mysql_url is None:
        url = f"sqlite+aiosqlite:///{workdir / 'withdrawals.db'}"
    else:
        engine = create_async_engine(backend.mysql_url.rstrip("/") + "/")
        name = f"tuike_w{secrets.token_hex(4)}"
        async with engine.begin() as conn:
            await conn.execute(
                text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            )
        await engine.dispose()
        url = f"{backend.mysql_url.rstrip('/')}/{name}?charset=utf8mb4"
    db = Database(url)
    try:
        await migrate(db, MIGRATIONS)
        await ensure_monthly_tables(db, tables_for(ZONE.key), datetime.now(UTC), months_ahead=1)
    finally:
        await db.dispose()
    return url


async def _drop_schema(backend: Backend, url: str) -> None:
    if backend.mysql_url is None:
        return
    engine = create_async_engine(backend.mysql_url.rstrip("/") + "/")
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP DATABASE IF EXISTS `{make_url(url).database}`"))
    await engine.dispose()


@pytest.fixture(scope="session")
def withdrawal_database_url(
    backend: Backend, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One migrated database per backend for the withdrawal tests (built in its own loop)."""
    url = asyncio.run(_create_schema(backend, tmp_path_factory.mktemp("withdrawals")))
    yield url
    asyncio.run(_drop_schema(backend, url))


@pytest.fixture
async def wdb(withdrawal_database_url: str) -> AsyncIterator[Database]:
    database = Database(withdrawal_database_url)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def wctx(
    wdb: Database,
    settings: Settings,
    merchant_key: rsa.RSAPrivateKey,
    fake_wechat_server: tuple[FakeWechatPay, str],
) -> AsyncIterator[WithdrawalContext]:
    db = wdb
    fake, url = fake_wechat_server
    wechat = WechatTransferProvider(
        base_url=url,
        mchid="1900000109",
        appid="wxd678efh567hg6787",
        serial_no="5157F09EFDC",
        private_key=merchant_key,
        platform_public_key=fake.platform_key.public_key(),
        platform_public_key_id="PUB_KEY_ID_0000000001",
    )
    yield WithdrawalContext(
        db=db,
        ids=IdGenerator(int.from_bytes(os.urandom(1), "big")),
        zone=ZONE,
        cipher=PayeeCipher(os.urandom(32)),
        settings_in_tx=settings.in_tx,
        providers={"wechat": wechat},
    )


async def fund(ctx: WithdrawalContext, promoter_id: int, amount: int) -> None:
    """Credit settled commission to the promoter's available account through the ledger."""

    async def work(tx: Tx) -> None:
        await post_transfers(
            tx,
            ctx.ids,
            ctx.tables,
            [
                Transfer(
                    kind="settle",
                    key=f"test-fund:{secrets.token_hex(8)}",
                    debit=PLATFORM_EXPENSE,
                    credit=promoter_account(promoter_id, "available"),
                    amount=amount,
                    currency="CNY",
                )
            ],
        )

    await ctx.db.run(work)


async def new_promoter(ctx: WithdrawalContext, balance: int = 0, *, full_payee: bool = True) -> int:
    """A promoter with payee details on file (all channels) and ``balance`` available."""
    promoter_id = ctx.ids.next_id()
    await save_payee(
        ctx,
        promoter_id,
        PayeeInput(
            real_name="张三丰",
            id_number=ID_NUMBER,
            bank_card=CARD if full_payee else None,
            bank_name="中国工商银行" if full_payee else None,
            wechat_openid=OPENID if full_payee else None,
            alipay_account="zhang@example.com" if full_payee else None,
        ),
    )
    if balance:
        await fund(ctx, promoter_id, balance)
    return promoter_id
