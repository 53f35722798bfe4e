"""Request ids: taken from ``X-Request-ID`` when a caller (the gateway) sends one, else
made here; echoed in the response and put in every log line."""

from __future__ import annotations

import re
import uuid

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.common.logs import REQUEST_ID_HEADER, request_id_var

_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_HEADER_BYTES = REQUEST_ID_HEADER.lower().encode("ascii")


class _RequestId:
    """Sets the request id for the logs of this request and echoes it in the response (a
    pure ASGI middleware: no extra task or body stream per request)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        candidate = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        request_id = candidate if _VALID.match(candidate) else uuid.uuid4().hex
        encoded = request_id.encode("ascii")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() != _HEADER_BYTES
                ]
                headers.append((_HEADER_BYTES, encoded))
                message["headers"] = headers
            await send(message)

        token = request_id_var.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


def with_request_id(app: ASGIApp) -> ASGIApp:
    """``app`` behind the request-id middleware (for apps outside FastAPI's stack)."""
    return _RequestId(app)


def install_request_id(app: FastAPI) -> None:
    app.add_middleware(_RequestId)
