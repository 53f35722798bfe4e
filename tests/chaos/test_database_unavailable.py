"""A database that stays away through every retry is a 503 ``database.unavailable`` with
Retry-After, never a 500, and the request wrote nothing; once it is back, the same request
succeeds. MariaDB is cut through the chaos proxy; SQLite is held by another writer."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import Column, Integer, MetaData, Table, func, select
from sqlalchemy.engine import make_url

from chaos.proxy import TcpProxy
from deploy.local.stack import free_port
from libs.common.db.engine import Database, Tx
from libs.common.errors import install_error_handlers

metadata = MetaData()
notes = Table("unavailable_notes", metadata, Column("id", Integer, primary_key=True))


def _app(db: Database) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/notes/{note_id}")
    async def add_note(note_id: int) -> dict[str, int]:
        async def work(tx: Tx) -> None:
            await (await tx.main()).execute(notes.insert(), [{"id": note_id}])

        await db.run(work)
        return {"id": note_id}

    return app


async def _count(db: Database) -> int:
    async with db.read(may_lag=False) as conn:
        return int((await conn.execute(select(func.count()).select_from(notes))).scalar_one())


@pytest.fixture
async def table(db: Database) -> AsyncIterator[None]:
    async with db.primary.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
    yield
    async with db.primary.begin() as conn:
        await conn.run_sync(metadata.drop_all)


async def _post(app: FastAPI, note_id: int) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(f"/notes/{note_id}")


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database.unavailable"
    assert response.headers["retry-after"] == "1"


async def test_a_database_away_through_every_retry_is_a_503(
    db: Database, table: None, database_url: str
) -> None:
    if db.is_sqlite:
        await _sqlite_held_by_another_writer(db, database_url)
    else:
        await _mariadb_cut_by_the_proxy(db, database_url)


async def _sqlite_held_by_another_writer(db: Database, database_url: str) -> None:
    # Each attempt gives up on the lock after 0.1 s instead of 30.
    busy = Database(database_url, max_attempts=3, min_retry_seconds=1.0, lock_wait_seconds=0.1)

    holder = sqlite3.connect(make_url(database_url).database or "", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        _assert_unavailable(await _post(_app(busy), 1))
        holder.execute("ROLLBACK")
        assert await _count(db) == 0
        assert (await _post(_app(busy), 1)).status_code == 200
        assert await _count(db) == 1
    finally:
        holder.close()
        await busy.dispose()


async def _mariadb_cut_by_the_proxy(db: Database, database_url: str) -> None:
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 3306, free_port())
    await proxy.start()
    proxied = Database(
        url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        max_attempts=3,
        min_retry_seconds=1.0,
    )
    try:
        assert (await _post(_app(proxied), 1)).status_code == 200
        cut = asyncio.create_task(proxy.cut(4.0))
        await asyncio.sleep(0.2)
        _assert_unavailable(await _post(_app(proxied), 2))
        await cut
        assert await _count(db) == 1
        assert (await _post(_app(proxied), 2)).status_code == 200
        assert await _count(db) == 2
    finally:
        await proxied.dispose()
        await proxy.stop()
