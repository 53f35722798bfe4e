"""Lean routes answer as the app's ordinary routes would: the same envelopes for refusals and
for unexpected errors, the request id echoed, the metrics labelled by the route's template."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import httpx
from fastapi import Query
from prometheus_client import generate_latest
from pydantic import BaseModel, Field, TypeAdapter
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from libs.common.errors import Conflict, install_error_handlers
from libs.common.lean_routes import LeanApp, json_answer, json_body, plain_answer, query_parameter
from libs.common.metrics import measured
from libs.common.requests import install_request_id, with_request_id


class Echo(BaseModel):
    word: str


async def _echo(request: Request) -> Response:
    body = await json_body(request, Echo)
    if body.word == "conflict":
        raise Conflict("no conflicts here", code="echo.conflict")
    if body.word == "crash":
        raise RuntimeError("a bug")
    return json_answer(body)


def _app() -> LeanApp:
    app = LeanApp()
    install_error_handlers(app)
    install_request_id(app)
    routes = [Route("/api/v1/echo", _echo, methods=["POST"])]
    app.serve_lean(routes, lambda e: with_request_id(measured(e, "lean-test", app.router)))
    return app


async def _post(body: object, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post("/api/v1/echo", json=body, headers=headers)


async def test_a_lean_route_answers_in_the_envelope() -> None:
    ok = await _post({"word": "hello"}, **{"X-Request-ID": "r-1"})
    assert (ok.status_code, ok.json()) == (200, {"word": "hello"})
    assert ok.headers["x-request-id"] == "r-1"

    malformed = await _post({"word": 5})
    assert malformed.status_code == 422
    assert malformed.json()["error"]["code"] == "request.invalid"
    assert malformed.headers["x-request-id"]  # one was made

    refused = await _post({"word": "conflict"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "echo.conflict")

    crashed = await _post({"word": "crash"}, **{"X-Request-ID": "r-2"})
    assert (crashed.status_code, crashed.json()["error"]["code"]) == (500, "internal")
    assert crashed.headers["x-request-id"] == "r-2"

    exported = generate_latest().decode()
    for status in (200, 409, 422, 500):
        assert (
            f'method="POST",path="/api/v1/echo",service="lean-test",status="{status}"' in exported
        )


async def test_other_methods_and_paths_go_through_fastapi() -> None:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        wrong_method = await client.get("/api/v1/echo")
        unknown = await client.post("/api/v1/echo/more", json={"word": "x"})
    assert wrong_method.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"


class _Answer(BaseModel):
    text: str
    big: int
    at: datetime
    ratio: float | None


def test_an_answer_is_byte_for_byte_what_pydantic_writes() -> None:
    """json_answer encodes with orjson: the same bytes as model_dump_json, escapes included."""
    for text in ['\x00\x1f\n\t"\\/é😀\u2028\x7f', "," + "7234567890123456789," * 1000]:
        for ratio in (None, 0.1, 1e20):
            answer = _Answer(
                text=text, big=2**63 - 1, at=datetime(2026, 11, 27, 3, 0, 1, 5), ratio=ratio
            )
            response = json_answer(answer, status_code=201)
            assert response.body == answer.model_dump_json().encode()
            assert response.status_code == 201
            assert response.headers["content-type"] == "application/json"


_LEVELS = TypeAdapter(Annotated[int, Field(ge=1, le=10)])


async def _count(thing_id: str, levels: int) -> Response:
    if thing_id == "0":
        raise Conflict("thing zero cannot be counted", code="thing.zero")
    return plain_answer({"thing": thing_id, "levels": levels})


async def _count_lean(request: Request) -> Response:
    levels = query_parameter(request, "levels", _LEVELS, 3)
    answer = await _count(request.path_params["thing_id"], levels)
    answer.headers["x-served-by"] = "lean"  # the test's own mark, to see who answered
    return answer


def _things_app(lean: bool) -> LeanApp:
    app = LeanApp()
    install_error_handlers(app)
    install_request_id(app)

    @app.get("/api/v1/things/special/count")
    async def special() -> dict[str, str]:
        return {"thing": "special"}

    @app.get("/api/v1/things/{thing_id}/count")
    async def count(thing_id: str, levels: int = Query(default=3, ge=1, le=10)) -> Response:
        return await _count(thing_id, levels)

    if lean:
        routes = [Route("/api/v1/things/{thing_id}/count", _count_lean, methods=["GET"])]
        app.serve_lean(routes, lambda e: with_request_id(measured(e, "lean-test", app.router)))
    return app


async def test_a_lean_route_with_parameters_answers_as_its_fastapi_route() -> None:
    """Digits in the path's place and the same query validation: every answer (refusals
    included) equals the FastAPI route's; anything else is left to FastAPI."""
    urls = [
        "/api/v1/things/7/count",
        "/api/v1/things/7/count?levels=10",
        "/api/v1/things/7/count?levels=2&levels=5",
        "/api/v1/things/7/count?levels=11",
        "/api/v1/things/7/count?levels=0",
        "/api/v1/things/7/count?levels=abc",
        "/api/v1/things/7/count?levels=",
        "/api/v1/things/7/count?other=1",
        "/api/v1/things/0/count",
        "/api/v1/things/special/count",
        "/api/v1/things/x7/count",
        "/api/v1/things/7/count/",
        "/api/v1/things/7/counts",
        "/api/v1/things//count",
    ]
    answers: dict[bool, list[tuple[int, object, str | None]]] = {}
    for lean in (False, True):
        transport = httpx.ASGITransport(app=_things_app(lean), raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers[lean] = []
            for url in urls:
                got = await client.get(url, follow_redirects=False)
                body = got.json() if got.content else got.headers.get("location")
                answers[lean].append((got.status_code, body, got.headers.get("x-served-by")))
            head = await client.head(urls[0])
            answers[lean].append((head.status_code, None, head.headers.get("x-served-by")))
    assert [a[:2] for a in answers[True]] == [a[:2] for a in answers[False]]
    served = [url for url, answer in zip([*urls, "HEAD"], answers[True], strict=True) if answer[2]]
    # The successes marked lean; "special" (a literal segment) and HEAD answered by FastAPI.
    # The refusals served lean show in the metrics, which only the lean endpoint records.
    assert served == [urls[i] for i in (0, 1, 2, 7)]
    assert answers[True][9][:2] == (200, {"thing": "special"})
    assert answers[True][3][:2] == (
        400,
        {
            "error": {
                "code": "request.bad_parameter",
                "message": "a path or query parameter is invalid",
                "details": {
                    "errors": [
                        {
                            "loc": ["query", "levels"],
                            "msg": "Input should be less than or equal to 10",
                            "type": "less_than_equal",
                        }
                    ]
                },
            }
        },
    )
    assert answers[True][2][1] == {"thing": "7", "levels": 5}  # the last value given
    exported = generate_latest().decode()
    for status in (200, 400, 409):
        assert (
            f'method="GET",path="/api/v1/things/{{thing_id}}/count",service="lean-test",'
            f'status="{status}"' in exported
        )
