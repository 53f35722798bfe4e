"""The user service, called directly (not through the gateway) with the internal key.

Every failure to get an answer (connection refused, timeout, a 5xx, a route not there yet)
is :class:`UserServiceUnavailable`: the caller decides whether to wait (attribution
``pending``) or to refuse (a webhook answers 503 so the platform retries).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from libs.common.auth import internal_headers
from services.order.settings import OrderServiceSettings

log = logging.getLogger("tuike.order.user_client")


class UserServiceUnavailable(Exception):
    """No usable answer from the user service; try again later."""


class UnknownBuyer(Exception):
    """The user service answered that the buyer does not exist."""


@dataclass(frozen=True)
class Attribution:
    promoter_id: int | None
    beneficiaries: list[dict[str, int]]  # [{level, user_id}], level 1 first


class UserServiceClient:
    def __init__(self, settings: OrderServiceSettings) -> None:
        self.base_url = settings.user_service_url.rstrip("/")
        self.headers = internal_headers(settings)
        self.timeout = settings.user_service_timeout_seconds
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url, headers=self.headers, timeout=self.timeout
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self._http().post(path, json=body)
        except httpx.HTTPError as exc:
            raise UserServiceUnavailable(f"{path}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _error_code(response: httpx.Response) -> str | None:
        try:
            return str(response.json()["error"]["code"])
        except Exception:
            return None

    async def attribution(
        self, buyer_user_id: int, promoter_code: str | None, levels: int
    ) -> Attribution:
        """The buyer's promoter and beneficiary chain (the user service applies the bind
        rules, and binds the buyer by the code where the bind mode allows)."""
        response = await self._post(
            "/api/v1/relations/attribution",
            {
                "buyer_user_id": str(buyer_user_id),
                "promoter_code": promoter_code,
                "levels": levels,
            },
        )
        if response.status_code == 404 and self._error_code(response) == "user.not_found":
            raise UnknownBuyer(str(buyer_user_id))
        if response.status_code != 200:
            raise UserServiceUnavailable(
                f"attribution answered {response.status_code}: {response.text[:200]}"
            )
        body = response.json()
        beneficiaries = sorted(
            (
                {"level": int(b["level"]), "user_id": int(b["user_id"])}
                for b in body.get("beneficiaries") or []
            ),
            key=lambda b: b["level"],
        )
        promoter = body.get("promoter_id")
        return Attribution(
            promoter_id=int(promoter) if promoter is not None else None,
            beneficiaries=beneficiaries,
        )

    async def ensure_user(
        self, platform: str, external_id: str, nickname: str | None, phone: str | None
    ) -> int:
        """The Tuike user of a platform customer, created on first sight (idempotent)."""
        body: dict[str, Any] = {"platform": platform, "external_id": external_id}
        if nickname:
            body["nickname"] = nickname[:64]
        if phone:
            body["phone"] = phone[:32]
        response = await self._post("/api/v1/users", body)
        if response.status_code == 422 and len(body) > 2:
            # A nickname or phone the user service will not take must not block the order:
            # the buyer is created from the platform's key alone.
            response = await self._post(
                "/api/v1/users", {"platform": platform, "external_id": external_id}
            )
        if response.status_code not in (200, 201):
            raise UserServiceUnavailable(
                f"creating a user answered {response.status_code}: {response.text[:200]}"
            )
        return int(response.json()["id"])
