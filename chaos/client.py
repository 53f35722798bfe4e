"""The traffic's HTTP client: every call is retried with the same body (so the same
idempotency key, order number, refund number) until the system gives a definitive answer.

Faults make requests fail (connection refused, reset, 502/503/504 while a process restarts);
retrying them is the point of the exercise, since a retry must never double a payment. Every
failure is counted by kind; answers with status 500 are also kept, because a 500 is a bug
(ARCHITECTURE §9: a busy or missing dependency is a retry or a 503, never a 500).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

# Answers that mean "not now": the request may or may not have been applied, ask again.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass
class Counts:
    requests: int = 0  # every attempt sent
    succeeded: int = 0  # calls that ended in a 2xx
    refused: Counter[str] = field(default_factory=Counter)  # definitive 4xx, by error code
    failures: Counter[str] = field(default_factory=Counter)  # retried attempts, by kind
    gave_up: int = 0  # calls abandoned after the retry budget
    server_errors: list[str] = field(default_factory=list)  # 500 answers, first ones


class Api:
    """An admin client of the gateway that retries until a definitive answer."""

    def __init__(self, base_url: str, admin_key: str, rng: random.Random, counts: Counts) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=httpx.Timeout(20.0, connect=3.0),
        )
        self.rng = rng
        self.counts = counts

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
        retry_codes: tuple[str, ...] = (),
        budget: float = 120.0,
    ) -> httpx.Response | None:
        """The first definitive answer (2xx or a 4xx not in ``retry_codes``), or None when
        the budget ran out (counted in ``gave_up``)."""
        deadline = time.monotonic() + budget
        delay = 0.1
        while True:
            self.counts.requests += 1
            kind: str | None = None
            try:
                response = await self.client.request(method, path, json=body, params=params)
            except httpx.TransportError as exc:
                kind = type(exc).__name__
            else:
                if response.status_code < 300:
                    self.counts.succeeded += 1
                    return response
                code = _error_code(response)
                if response.status_code in RETRY_STATUSES or code in retry_codes:
                    kind = f"{response.status_code} {code}"
                    if response.status_code == 500 and len(self.counts.server_errors) < 50:
                        self.counts.server_errors.append(
                            f"{method} {path} -> 500 {response.text[:300]}"
                        )
                else:
                    self.counts.refused[code] += 1
                    return response
            self.counts.failures[kind] += 1
            if time.monotonic() > deadline:
                self.counts.gave_up += 1
                return None
            await asyncio.sleep(delay * (0.5 + self.rng.random()))
            delay = min(delay * 2, 2.0)

    async def get_json(self, path: str, **params: Any) -> Any:
        """A read that must succeed (used by reconciliation): retried, then raises."""
        response = await self.call("GET", path, params=params or None, budget=60)
        if response is None or response.status_code != 200:
            raise RuntimeError(
                f"GET {path} failed: {None if response is None else response.text[:300]}"
            )
        return response.json()


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except Exception:
        return f"http.{response.status_code}"
