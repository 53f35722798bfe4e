"""One error type for every business refusal, and the one JSON envelope it is shown in.

``{"error": {"code": "relation.cycle", "message": "...", "details": {...}}}``
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from libs.common.db.engine import is_retryable

log = logging.getLogger("tuike.errors")


class TuikeError(Exception):
    """A refusal with a stable machine code and the HTTP status that fits it."""

    code: str = "error"
    status: int = 400

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details = details or {}


class NotFound(TuikeError):
    code = "not_found"
    status = 404


class Conflict(TuikeError):
    code = "conflict"
    status = 409


class BadRequest(TuikeError):
    code = "bad_request"
    status = 400


class Unauthorized(TuikeError):
    code = "auth.unauthenticated"
    status = 401


class Forbidden(TuikeError):
    code = "auth.forbidden"
    status = 403


class ServiceUnavailable(TuikeError):
    code = "service.unavailable"
    status = 503


def envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(envelope(code, message, details), status_code=status, headers=headers)


_STATUS_CODES = {
    400: "bad_request",
    401: "auth.unauthenticated",
    403: "auth.forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request.too_large",
    415: "request.unsupported_media_type",
    429: "rate_limited",
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TuikeError)
    async def _tuike(_: Request, exc: TuikeError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "loc": [str(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", "")),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        # 422 only for a malformed body; a bad path or query parameter is a plain 400.
        in_body = any(p["loc"][:1] == ["body"] for p in problems)
        if in_body:
            return error_response(
                422, "request.invalid", "the request body is malformed", {"errors": problems}
            )
        return error_response(
            400,
            "request.bad_parameter",
            "a path or query parameter is invalid",
            {"errors": problems},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code
        if exc.status_code == 404 and message == "Not Found":
            message = "no such route"
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, message, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_retryable(exc):
            # The database stayed away through every retry: the request changed nothing
            # (its transaction rolled back) and may be sent again.
            log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
            return error_response(
                503,
                "database.unavailable",
                "the database is unavailable; nothing was changed, try again",
                headers={"Retry-After": "1"},
            )
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error")
