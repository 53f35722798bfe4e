"""Helpers of the gateway tests: tokens for each role, platform API keys, and an in-process
gateway (FastAPI TestClient) with its own settings in front of the session stack's services."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from deploy.local.stack import Stack
from gateway.app import create_app
from gateway.settings import GatewaySettings
from libs.common.auth import make_token
from libs.common.settings import CommonSettings

ROLES = ("promoter", "finance", "platform", "admin")


def stack_settings(stack: Stack) -> CommonSettings:
    return CommonSettings(
        jwt_secret=stack.config.jwt_secret, internal_api_key=stack.config.internal_key
    )


def token(stack: Stack, subject: str | int, *roles: str, **extra: Any) -> str:
    return make_token(stack_settings(stack), subject, list(roles), **extra)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def gateway(stack: Stack) -> Iterator[httpx.Client]:
    """An anonymous client of the stack's gateway process."""
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as client:
        yield client


@pytest.fixture
def platform_key(api: httpx.Client) -> Callable[[str], str]:
    """Creates a platform API key through the admin API; returns the full key."""

    def create(platform: str) -> str:
        response = api.post("/api/v1/api-keys", json={"platform": platform, "name": "test"})
        assert response.status_code == 201, response.text
        return str(response.json()["api_key"])

    return create


@pytest.fixture
def local_gateway(stack: Stack, tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """A gateway in this process with settings of the test's choosing, in front of the
    session stack's real services, Redis and JWT keys."""
    clients: list[TestClient] = []

    def start(**overrides: Any) -> TestClient:
        values: dict[str, Any] = {
            "redis_url": stack.redis_url,
            "redis_key_prefix": f"{stack.config.redis_key_prefix}local-{secrets.token_hex(3)}:",
            "bootstrap_admin_key": stack.config.admin_key,
            "internal_api_key": stack.config.internal_key,
            "jwt_secret": stack.config.jwt_secret,
            "gateway_database_url": f"sqlite+aiosqlite:///{tmp_path / f'gw{len(clients)}.db'}",
            **{
                f"{s}_service_url": stack.service_url(s)
                for s in ("user", "order", "commission", "stats")
            },
        }
        values.update(overrides)
        client = TestClient(create_app(GatewaySettings(**values)), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)
