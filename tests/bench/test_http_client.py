"""The benchmarks' lean HTTP client against a real uvicorn server: what it reads is what the
server sent, it keeps one connection per caller in flight, and an answer it cannot read is an
error, never a hang."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from bench.http_client import BenchClient, BenchHTTPError
from tests.withdrawals.fake_wechat import FakeServer


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> JSONResponse:
        assert request.client is not None
        return JSONResponse(
            {
                "body": await request.json(),
                "authorization": request.headers.get("authorization"),
                "content_type": request.headers.get("content-type"),
                "client_port": request.client.port,
            }
        )

    @app.get("/query")
    async def query(request: Request) -> JSONResponse:
        assert request.client is not None
        await asyncio.sleep(0.01)  # keeps callers in flight together
        return JSONResponse({"params": dict(request.query_params), "port": request.client.port})

    @app.get("/refused")
    async def refused() -> JSONResponse:
        return JSONResponse({"error": {"code": "thing.not_found"}}, status_code=404)

    @app.get("/big")
    async def big() -> JSONResponse:
        return JSONResponse({"items": [str(n) * 3 for n in range(60_000)]})

    @app.get("/streamed")
    async def streamed() -> StreamingResponse:
        return StreamingResponse(iter([b'{"a":', b"1}"]), media_type="application/json")

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[FakeServer]:
    with FakeServer(_app()) as running:
        yield running


async def test_answers_are_read_as_sent_over_one_kept_connection(server: FakeServer) -> None:
    async with BenchClient(server.url, {"Authorization": "Bearer k1"}) as client:
        ports = set()
        for n in range(20):
            status, answer = await client.post("/echo", {"user_id": str(n), "name": "推客"})
            assert status == 200
            assert answer["body"] == {"user_id": str(n), "name": "推客"}
            assert answer["authorization"] == "Bearer k1"
            assert answer["content_type"] == "application/json"
            ports.add(answer["client_port"])
        assert len(ports) == 1  # keep-alive: twenty requests, one connection

        assert await client.get("/query", levels=1000, cursor="a b&c") == (
            200,
            {"params": {"levels": "1000", "cursor": "a b&c"}, "port": ports.pop()},
        )
        assert await client.get("/refused") == (404, {"error": {"code": "thing.not_found"}})
        status, answer = await client.get("/big")  # ~1 MB: many TCP segments
        assert status == 200
        assert answer["items"][-1] == "59999" * 3 and len(answer["items"]) == 60_000


async def test_each_caller_in_flight_has_a_connection_of_its_own(server: FakeServer) -> None:
    async with BenchClient(server.url) as client:
        for _ in range(3):
            answers = await asyncio.gather(*(client.get("/query", n=n) for n in range(6)))
            assert [a["params"]["n"] for _, a in answers] == [str(n) for n in range(6)]
            # Six callers at once: six connections, opened once and then kept.
            assert len({a["port"] for _, a in answers}) == 6
        assert len(client._all) == 6


async def test_an_answer_without_a_length_is_an_error_not_a_hang(server: FakeServer) -> None:
    async with BenchClient(server.url) as client:
        with pytest.raises(BenchHTTPError, match="without Content-Length"):
            await asyncio.wait_for(client.get("/streamed"), 10)
        # The connection it was on is closed; the next call opens another.
        assert (await client.post("/echo", {"a": 1}))[1]["body"] == {"a": 1}


async def test_a_server_that_goes_away_fails_the_call() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    listener = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener, BenchClient(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(BenchHTTPError, match="closed the connection"):
            await asyncio.wait_for(client.get("/anything"), 10)
