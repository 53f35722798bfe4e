"""Request ids: taken from ``X-Request-ID`` when a caller (the gateway) sends one, else
made here; echoed in the response and put in every log line."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

from libs.common.logs import REQUEST_ID_HEADER, request_id_var

_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def incoming_request_id(request: Request) -> str:
    candidate = request.headers.get(REQUEST_ID_HEADER, "")
    return candidate if _VALID.match(candidate) else uuid.uuid4().hex


def install_request_id(app: FastAPI) -> None:
    @app.middleware("http")
    async def _request_id(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request_id = incoming_request_id(request)
        token = request_id_var.set(request_id)
        try:
            response = await call_next(request)
        finally:
            request_id_var.reset(token)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response
