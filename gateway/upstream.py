"""The gateway's HTTP client to the services: one pooled aiohttp session per process.

aiohttp rather than httpx because the gateway pays the client's CPU on every proxied
request: aiohttp parses in C and keeps its pool in a dict, where httpx/httpcore spent more
CPU per request than the whole rest of the gateway (a poll() of every pooled socket per
request, and a failed ``import sniffio`` each time: docs/decisions/0506-gateway-overhead.md).

What a proxy needs from it, set here once:
- no cookie jar: a cookie one caller's response sets must never ride on another caller's
  request (aiohttp's default session keeps cookies);
- no redirects followed: a redirect (the short links under ``/s/``) goes back to the caller;
- pooled keep-alive connections that expire before uvicorn's 5 s keep-alive, so the gateway
  never reuses a connection the service is closing at that moment;
- a connect timeout and a total timeout per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

# Below uvicorn's 5 s keep-alive (see the module docstring).
_KEEPALIVE_SECONDS = 2.0


class UpstreamError(Exception):
    """The service could not be reached or broke the connection (no HTTP answer)."""


class UpstreamTimeout(UpstreamError):
    """The service did not answer within the timeout."""


class UpstreamNeverReached(UpstreamError):
    """The connection could not be opened: the request surely never reached the service."""


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    # Raw header pairs as the service sent them (repeated names such as Set-Cookie kept).
    headers: tuple[tuple[bytes, bytes], ...]
    content_type: str
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class UpstreamClient:
    def __init__(self, *, connect_timeout: float, timeout: float, max_connections: int) -> None:
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.max_connections, keepalive_timeout=_KEEPALIVE_SECONDS
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout, sock_connect=self.connect_timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            # Forward the caller's User-Agent or none; never add aiohttp's own.
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the upstream client is not started")
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout_seconds: float | None = None,
    ) -> UpstreamResponse:
        """One request; ``url`` is used as given (already percent-encoded, never re-quoted).

        aiohttp itself resends a GET, HEAD, OPTIONS, PUT or DELETE once when a pooled
        connection turns out closed before any answer (RFC 9112 §9.3.1); POST and PATCH are
        never resent. Raises :class:`UpstreamTimeout`, :class:`UpstreamNeverReached` or
        :class:`UpstreamError` when there is no HTTP answer.
        """
        options: dict[str, Any] = {}
        if timeout_seconds is not None:
            options["timeout"] = aiohttp.ClientTimeout(
                total=timeout_seconds, sock_connect=min(timeout_seconds, self.connect_timeout)
            )
        try:
            async with self.session.request(
                method,
                URL(url, encoded=True),
                data=body or None,
                headers=headers,
                allow_redirects=False,
                **options,
            ) as response:
                content = await response.read()
                return UpstreamResponse(
                    status=response.status,
                    headers=tuple(response.raw_headers),
                    content_type=response.headers.get("Content-Type", ""),
                    body=content,
                )
        except TimeoutError as exc:  # aiohttp's connect and read timeouts are TimeoutErrors
            raise UpstreamTimeout(str(exc) or "timed out") from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamNeverReached(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(str(exc) or type(exc).__name__) from exc

    async def get_json(
        self, url: str, *, headers: dict[str, str] | None = None, timeout_seconds: float = 3.0
    ) -> tuple[int, Any]:
        """(status, parsed JSON body) of a GET; ValueError when the body is not JSON."""
        response = await self.request("GET", url, headers=headers, timeout_seconds=timeout_seconds)
        try:
            return response.status, response.json()
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{url} answered {response.status} without JSON") from exc
