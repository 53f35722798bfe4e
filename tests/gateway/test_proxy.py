"""What the proxy itself promises, whatever HTTP client it uses: the request reaches the
service as the caller sent it (raw path, raw query, request id), the answer comes back as
the service gave it (redirects not followed, repeated headers kept), nothing of one caller
leaks into another's request (cookies), a service that does not answer is a 504 within the
timeout, a Redis that does not answer costs at most its timeout (rate limits fail open,
replay protection fails closed), and verified tokens are never remembered past their
expiry.

The upstream here is a stand-in HTTP server in this process (the real services never set
cookies or redirect, so they cannot show these)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from fastapi.testclient import TestClient

from deploy.local.stack import Stack
from gateway.admission import CallerCache
from gateway.signatures import sign_request
from gateway.upstream import UpstreamClient
from libs.common.auth import Caller
from tests.gateway.conftest import bearer, token

LocalGateway = Callable[..., TestClient]


class _StandIn(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/api/v1/users/redirect"):
            self.send_response(302)
            self.send_header("Location", "https://shop.example/landing?code=abc")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/api/v1/users/slow"):
            time.sleep(3)  # longer than the gateway waits; then hang up without an answer
            self.close_connection = True
            return
        body = json.dumps(
            {"path": self.path, "cookie": self.headers.get("Cookie"), "headers": dict(self.headers)}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "session=caller-one; Path=/")
        self.send_header("Set-Cookie", "theme=dark; Path=/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def stand_in() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_request_reaches_the_service_as_sent(
    stack: Stack, local_gateway: LocalGateway, stand_in: str
) -> None:
    client = local_gateway(user_service_url=stand_in)
    response = client.get(
        "/api/v1/users/a%2Fb?status=frozen&beneficiary_id=1&beneficiary_id=2&q=%E5%BC%A0",
        headers={**bearer(stack.config.admin_key), "X-Request-ID": "req-proxy-1"},
    )
    assert response.status_code == 200, response.text
    seen = response.json()
    # Percent-encoding and repeated parameters arrive untouched (a decoded %2F would route
    # to another path at the service).
    assert seen["path"] == (
        "/api/v1/users/a%2Fb?status=frozen&beneficiary_id=1&beneficiary_id=2&q=%E5%BC%A0"
    )
    assert seen["headers"]["X-Request-ID"] == "req-proxy-1"
    assert response.headers["X-Request-ID"] == "req-proxy-1"
    # Both cookies the service set come back to the caller.
    assert response.headers.get_list("set-cookie") == [
        "session=caller-one; Path=/",
        "theme=dark; Path=/",
    ]


async def test_dot_segments_reach_the_service_unresolved(stand_in: str) -> None:
    # The service must be asked for exactly the path the permission table judged (the test
    # client resolves "..", so the upstream client is driven directly here).
    client = UpstreamClient(connect_timeout=2.0, timeout=5.0, max_connections=2)
    await client.start()
    try:
        path = "/api/v1/stats/promoters/1/../../../commissions?beneficiary_id=2"
        response = await client.request("GET", f"{stand_in}{path}")
    finally:
        await client.close()
    assert response.json()["path"] == path


def test_cookies_of_one_answer_never_ride_on_the_next_request(
    stack: Stack, local_gateway: LocalGateway, stand_in: str
) -> None:
    client = local_gateway(user_service_url=stand_in)
    admin = bearer(stack.config.admin_key)
    first = client.get("/api/v1/users/1", headers=admin)
    assert first.status_code == 200
    client.cookies.clear()  # the test client keeps cookies; the gateway must not
    second = client.get("/api/v1/users/2", headers=admin)
    assert second.json()["cookie"] is None


def test_a_redirect_goes_back_to_the_caller(
    stack: Stack, local_gateway: LocalGateway, stand_in: str
) -> None:
    client = local_gateway(user_service_url=stand_in)
    response = client.get(
        "/api/v1/users/redirect", headers=bearer(stack.config.admin_key), follow_redirects=False
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "https://shop.example/landing?code=abc"


def test_a_service_that_does_not_answer_is_a_504_within_the_timeout(
    stack: Stack, local_gateway: LocalGateway, stand_in: str
) -> None:
    client = local_gateway(user_service_url=stand_in, upstream_timeout_seconds=0.5)
    started = time.monotonic()
    response = client.get("/api/v1/users/slow", headers=bearer(stack.config.admin_key))
    assert time.monotonic() - started < 2.5
    assert response.status_code == 504
    assert response.json()["error"] == {
        "code": "upstream.timeout",
        "message": "the user service timed out",
        "details": {"service": "user"},
    }


def test_a_promoter_token_keeps_working_through_the_caller_cache(
    stack: Stack, local_gateway: LocalGateway
) -> None:
    client = local_gateway()
    mine = bearer(token(stack, "7373", "promoter"))
    # Twice the same token (the second from the cache): same answers, same refusals.
    for _ in range(2):
        assert client.get("/api/v1/users/7373", headers=mine).status_code == 404
        refused = client.get("/api/v1/users/7374", headers=mine)
        assert refused.status_code == 403
        assert refused.headers["X-Tuike-Refused-By"] == "gateway"


@pytest.fixture
def hung_redis() -> Iterator[str]:
    """A port that accepts connections and never answers (a Redis stuck, not down)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


def test_a_redis_that_does_not_answer_costs_at_most_its_timeout(
    stack: Stack, local_gateway: LocalGateway, hung_redis: str
) -> None:
    client = local_gateway(redis_url=hung_redis, redis_timeout_seconds=0.3)
    admin = bearer(stack.config.admin_key)
    created = client.post(
        "/api/v1/api-keys", json={"platform": "shop-hung", "name": "t"}, headers=admin
    )
    assert created.status_code == 201, created.text
    promoter = bearer(token(stack, "7575", "promoter"))
    started = time.monotonic()
    passed = client.get("/api/v1/users/7575", headers=promoter)
    assert time.monotonic() - started < 2.0
    assert passed.status_code == 404  # the limiter let it through; the user does not exist
    headers = sign_request(created.json()["api_key"], "GET", "/api/v1/users/1")
    refused = client.get("/api/v1/users/1", headers=headers)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "auth.unavailable"
    assert client.get("/api/v1/users/1", headers=admin).status_code == 404


def _jwt(exp: float) -> str:
    return jwt.encode({"sub": "1", "exp": int(exp)}, "s" * 32, algorithm="HS256")


def test_the_caller_cache_never_outlives_the_token() -> None:
    caller = Caller(subject="1", roles=frozenset({"promoter"}), user_id=1)
    cache = CallerCache(seconds=60)
    fresh, expired = _jwt(time.time() + 600), _jwt(time.time() - 1)
    cache.put(fresh, caller)
    cache.put(expired, caller)  # accepted within the verifier's leeway, never remembered
    assert cache.get(fresh) == caller
    assert cache.get(expired) is None
    # Bounded: the least recently used token goes first.
    small = CallerCache(seconds=60, max_size=2)
    tokens = [_jwt(time.time() + 600 + i) for i in range(3)]
    small.put(tokens[0], caller)
    small.put(tokens[1], caller)
    assert small.get(tokens[0]) == caller
    small.put(tokens[2], caller)
    assert small.get(tokens[1]) is None
    assert small.get(tokens[0]) == caller and small.get(tokens[2]) == caller
