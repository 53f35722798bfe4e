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
routes in ``ServiceSpec.lean_routes`` (docs/decisions/0106-lean-routes.md). A lean route's
path may hold parameters (``/api/v1/relations/{user_id}/team``) that match digits only, the
ids of our paths: a literal segment in their place (``/relations/moves/...``) is never taken
from the route FastAPI would choose for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

_PARAMETER = re.compile(r"{(\w+)}")


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


def query_parameter(request: Request, name: str, adapter: TypeAdapter[T], default: T) -> T:
    """A query parameter as FastAPI reads a declared one: the last value given, validated by
    the same pydantic type; a bad one is the same 400 ``request.bad_parameter`` with the
    problems located under ``query``."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return adapter.validate_python(raw)
    except ValidationError as invalid:
        raise RequestValidationError(
            [{**error, "loc": ("query", name, *error["loc"])} for error in invalid.errors()]
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
        self._lean_templates: list[tuple[str, re.Pattern[str], ASGIApp]] = []

    def serve_lean(self, routes: Sequence[Route], wrap: Any) -> None:
        """Serve ``routes`` through ``wrap(endpoint_app)``: the middlewares a lean request
        still passes (request id, metrics). A path's ``{parameters}`` match digits only, and
        reach the endpoint as strings in ``request.path_params``. HEAD stays with FastAPI,
        whose routes declare no HEAD of their own (Starlette's ``Route`` adds it to GET)."""
        for route in routes:
            endpoint = wrap(_LeanEndpoint(self, route))
            for method in sorted(route.methods or ()):
                if method == "HEAD":
                    continue
                if _PARAMETER.search(route.path):
                    self._lean_templates.append((method, _pattern(route.path), endpoint))
                else:
                    self._lean[(method, route.path)] = endpoint

    def _lean_for(self, scope: Scope) -> ASGIApp | None:
        lean = self._lean.get((scope["method"], scope["path"]))
        if lean is None:
            for method, pattern, endpoint in self._lean_templates:
                match = pattern.match(scope["path"]) if method == scope["method"] else None
                if match is not None:
                    scope["path_params"] = match.groupdict()
                    return endpoint
        return lean

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            lean = self._lean_for(scope)
            if lean is not None:
                scope["app"] = self
                await lean(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _pattern(template: str) -> re.Pattern[str]:
    """The whole path ``template`` with each ``{name}`` standing for digits."""
    pieces = _PARAMETER.split(template)  # literal, name, literal, name, ..., literal
    return re.compile(
        "".join(
            re.escape(piece) if index % 2 == 0 else f"(?P<{piece}>[0-9]+)"
            for index, piece in enumerate(pieces)
        )
        + r"\Z"
    )


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
