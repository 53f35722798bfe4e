"""Test backends: always the embedded one (SQLite, embedded Redis, embedded broker); also
MariaDB + a real Redis when TUIKE_TEST_MYSQL_URL / TUIKE_TEST_REDIS_URL are set (CI)."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from deploy.local.stack import (
    Stack,
    StackConfig,
    free_port,
    redis_server_binary,
    tansu_binary,
    wait_port,
)
from libs.common.db.engine import Database


@dataclass(frozen=True)
class Backend:
    name: str
    mysql_url: str | None
    redis_url: str | None  # None: the embedded Redis

    def __str__(self) -> str:
        return self.name


def _backends() -> list[Backend]:
    found = [Backend("sqlite", None, None)]
    mysql_url = os.environ.get("TUIKE_TEST_MYSQL_URL")
    if mysql_url:
        found.append(Backend("mariadb", mysql_url, os.environ.get("TUIKE_TEST_REDIS_URL")))
    return found


BACKENDS = _backends()


@pytest.fixture(scope="session", params=BACKENDS, ids=str)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def embedded_redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            str(redis_server_binary()),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port("127.0.0.1", port, 20, process)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    """An embedded Kafka-protocol broker for in-process messaging tests."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_port("127.0.0.1", port, 20, process)
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


@pytest.fixture
def redis_url(backend: Backend, embedded_redis_url: str) -> str:
    return backend.redis_url or embedded_redis_url


@pytest.fixture
def key_prefix() -> str:
    return f"tuike-test-{secrets.token_hex(4)}:"


async def _mysql_database(server_url: str) -> tuple[str, str]:
    name = f"tuike_u{secrets.token_hex(4)}"
    engine = create_async_engine(server_url.rstrip("/") + "/")
    async with engine.begin() as conn:
        await conn.execute(
            text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        )
    await engine.dispose()
    return name, f"{server_url.rstrip('/')}/{name}?charset=utf8mb4"


async def _drop_mysql_database(server_url: str, name: str) -> None:
    engine = create_async_engine(server_url.rstrip("/") + "/")
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
    await engine.dispose()


@pytest.fixture
async def database_url(backend: Backend, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database of the backend."""
    if backend.mysql_url is None:
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    name, url = await _mysql_database(backend.mysql_url)
    try:
        yield url
    finally:
        await _drop_mysql_database(backend.mysql_url, name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture(scope="session")
def stack(
    backend: Backend, tmp_path_factory: pytest.TempPathFactory, embedded_redis_url: str
) -> Iterator[Stack]:
    """The whole suite in separate processes, shared by the end-to-end tests of a backend."""
    config = StackConfig.for_tests(
        tmp_path_factory.mktemp(f"stack-{backend.name}"),
        mysql_url=backend.mysql_url,
        redis_url=backend.redis_url or embedded_redis_url,
    )
    running = Stack(config)
    running.start(timeout=120)
    try:
        yield running
    finally:
        running.stop()
        if backend.mysql_url:
            import asyncio

            asyncio.run(running.drop_databases())


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    """An admin client of the gateway."""
    with httpx.Client(
        base_url=stack.gateway_url,
        headers={"Authorization": f"Bearer {stack.config.admin_key}"},
        timeout=30,
    ) as client:
        yield client
