"""Lean routes: a hot endpoint served as a plain Starlette route ahead of FastAPI's router.

FastAPI's per-request machinery (route search through every included router, dependency
solving, body and response models) costs ~0.15 ms of CPU per request, as much as a whole
group-committed bind. A lean route does the same steps by hand: parse the JSON body with the
same pydantic model (a malformed one is the same 422 ``request.invalid``), authorize, call one
service function, serialize the same response model. Errors are raised, not caught, so the
app's exception handlers answer them in the one envelope, and the middlewares (request id,
metrics) see the request as before. The FastAPI route with the same path stays declared, for
the OpenAPI document and as the contract the lean route keeps. A service lists its lean routes
in ``ServiceSpec.lean_routes`` (docs/decisions/0106-lean-routes.md).
"""

from __future__ import annotations

from typing import TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

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
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")
