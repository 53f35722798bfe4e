"""A lean HTTP/1.1 keep-alive client for benchmarks that share the machine with the service.

On this project's two-core machine the load generator takes CPU from the service it
measures, and its own time per request is part of every latency it records. aiohttp spends
0.35-0.45 ms of CPU per request here, a third of what the user service spends on a bind;
this client sends each request as one prepared byte string on a connection of its own and
reads the answer by its Content-Length: about 0.1 ms (docs/decisions/0109-bench-client.md).
It speaks only what our services answer: no redirects, no chunked bodies, no TLS.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson

_HEADERS_END = b"\r\n\r\n"


class BenchHTTPError(RuntimeError):
    """The server answered in a way this client does not read, or closed the connection."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[tuple[int, bytes]] | None = None
        self._buffer = bytearray()
        self._body_at = -1  # where the body of the answer being read starts
        self._length = 0
        self._status = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, request: bytes) -> asyncio.Future[tuple[int, bytes]]:
        if self.transport is None or self.transport.is_closing():
            raise BenchHTTPError("the connection is closed")
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.answer

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._body_at < 0 and not self._read_head():
            return
        end = self._body_at + self._length
        if len(self._buffer) < end:
            return
        body = bytes(self._buffer[self._body_at : end])
        del self._buffer[:end]
        self._body_at = -1
        self._finish(result=(self._status, body))

    def _read_head(self) -> bool:
        end = self._buffer.find(_HEADERS_END)
        if end < 0:
            return False
        lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" not in headers or "chunked" in headers.get("transfer-encoding", ""):
            self._finish(error=BenchHTTPError(f"an answer without Content-Length: {lines[0]}"))
            return False
        self._status, self._length = int(status_line[1]), int(headers["content-length"])
        self._body_at = end + len(_HEADERS_END)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._finish(error=BenchHTTPError(f"the server closed the connection ({exc})"))

    def _finish(
        self, result: tuple[int, bytes] | None = None, error: Exception | None = None
    ) -> None:
        answer, self.answer = self.answer, None
        if answer is None or answer.done():
            return
        if error is not None:
            answer.set_exception(error)
            if self.transport is not None:
                self.transport.close()
        else:
            assert result is not None
            answer.set_result(result)


class BenchClient:
    """``async with BenchClient(url, headers) as client``: ``get``/``post`` return the status
    and the parsed JSON answer. Each caller in flight gets a connection of its own, opened on
    first use and kept."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"an http:// URL with a host, not {base_url!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.base_path = parts.path.rstrip("/")
        fixed = {"Host": parts.netloc, **(headers or {})}
        self._fixed_headers = "".join(f"{name}: {value}\r\n" for name, value in fixed.items())
        self._idle: list[_Connection] = []
        self._all: list[_Connection] = []

    async def __aenter__(self) -> BenchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for connection in self._all:
            if connection.transport is not None:
                connection.transport.close()
        self._idle.clear()
        self._all.clear()

    async def get(self, path: str, **params: Any) -> tuple[int, Any]:
        target = path + ("?" + urlencode(params) if params else "")
        return await self._call("GET", target, b"")

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        return await self._call("POST", path, orjson.dumps(body))

    async def _call(self, method: str, target: str, body: bytes) -> tuple[int, Any]:
        head = f"{method} {self.base_path}{target} HTTP/1.1\r\n{self._fixed_headers}"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        connection = await self._connection()
        status, answer = await connection.send(head.encode() + b"\r\n" + body)
        self._idle.append(connection)
        return status, orjson.loads(answer) if answer else None

    async def _connection(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if connection.transport is not None:
                return connection
        _, connection = await asyncio.get_running_loop().create_connection(
            _Connection, self.host, self.port
        )
        self._all.append(connection)
        return connection
