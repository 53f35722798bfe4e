"""Lean routes: a hot endpoint served ahead of FastAPI's machinery.

FastAPI's per-request machinery (route search through every included router, dependency
solving, body and response models) costs ~0.15 ms of CPU per request, as much as a whole
group-committed bind, and the middleware stack around it (server errors, telemetry, body
limit, exception middleware, exit stack, router) as much again. A lean route does the same
steps by hand: parse the JSON body with the same pydantic model (a malformed one is the same
422 ``request.invalid``), authorize, call one service function, serialize the same response
model. ``LeanApp`` serves a request whose method and path are exactly a lean route's before
any of that: it runs the same request-id and metrics middlewares around the endpoint and
answers an exception with the app's own exception handlers, in the one envelope. Any other
request goes through FastAPI as usual. The FastAPI route with the same path stays declared,
for the OpenAPI document and as the contract the lean route keeps. A service lists its lean
routes in ``ServiceSpec.lean_routes`` (docs/decisions/0106-lean-routes.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

M = TypeVar("M", bound=BaseModel)


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def json_body(request: Request, model: type[M]) -> M:
    """The request's body as ``model``, refused as FastAPI refuses it: a body that is not
    declared JSON, is not JSON, or does not fit the model is a 422 with the problems listed."""
    raw = await request.body()
    if not _is_json(request.headers.get("content-type")):
        raise RequestValidationError(
            [
                {
                    "type": "model_attributes_type",
                    "loc": ("body",),
                    "msg": "the body must be JSON (Content-Type: application/json)",
                    "input": None,
                }
            ]
        )
    try:
        return model.model_validate_json(raw)
    except ValidationError as invalid:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in invalid.errors()]
        ) from None


def json_answer(model: BaseModel, status_code: int = 200) -> Response:
    """The model as ``model_dump_json`` writes it, byte for byte, encoded by orjson: pydantic
    escapes long strings a character at a time (12 µs for a 1,000-deep path, orjson 2 µs)."""
    return Response(
        orjson.dumps(model.model_dump(mode="json")),
        status_code=status_code,
        media_type="application/json",
    )


def plain_answer(content: dict[str, Any], status_code: int = 200) -> Response:
    """``content`` already in the JSON form of the route's response model (ids as strings),
    built by the caller where validating it would cost more than producing it: a test holds
    it equal to the model's ``model_dump_json``."""
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


class LeanApp(FastAPI):
    """A FastAPI app that serves its lean routes itself, ahead of its middleware stack."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lean: dict[tuple[str, str], ASGIApp] = {}

    def serve_lean(self, routes: Sequence[Route], wrap: Any) -> None:
        """Serve ``routes`` (exact paths) through ``wrap(endpoint_app)``: the middlewares a
        lean request still passes (request id, metrics)."""
        for route in routes:
            for method in route.methods or ():
                self._lean[(method, route.path)] = wrap(_LeanEndpoint(self, route))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            lean = self._lean.get((scope["method"], scope["path"]))
            if lean is not None:
                scope["app"] = self
                await lean(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class _LeanEndpoint:
    """Runs a lean endpoint; an exception is answered by the app's handler for its class (the
    one envelope), as FastAPI's exception middlewares would."""

    def __init__(self, app: FastAPI, route: Route) -> None:
        self.app, self.route = app, route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route  # the metrics' label: the route's template
        request = Request(scope, receive, send)
        try:
            response = await self.route.endpoint(request)
        except Exception as error:
            response = await self._handler(error)(request, error)
        await response(scope, receive, send)

    def _handler(self, error: Exception) -> Any:
        handlers = self.app.exception_handlers
        for cls in type(error).__mro__:
            if cls in handlers:
                return handlers[cls]
        raise error
