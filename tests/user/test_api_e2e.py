"""The user service through the gateway, on the real stack: users, promoters, binding,
relations, team counts (including the asynchronous whole team), attribution, admin moves."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.user.schemas import AncestorsOut, ChildrenOut


def _tag() -> str:
    return secrets.token_hex(4)


def _user(api: httpx.Client, **fields: Any) -> str:
    response = api.post("/api/v1/users", json={"external_id": f"e2e-{_tag()}", **fields})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _promoter(api: httpx.Client) -> tuple[str, str]:
    user_id = _user(api)
    response = api.post("/api/v1/promoters", json={"user_id": user_id})
    assert response.status_code == 201, response.text
    assert response.json()["status"] == "approved"
    return user_id, response.json()["code"]


def _bind(api: httpx.Client, user_id: str, code: str) -> httpx.Response:
    return api.post(
        "/api/v1/relations/bind", json={"user_id": user_id, "promoter_code": code, "source": "link"}
    )


def _error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def _eventually(check: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


@pytest.fixture
def bind_mode(api: httpx.Client) -> Iterator[Any]:
    """Change the bind mode for one test and put the default back (the stack is shared)."""

    def change(mode: str) -> None:
        assert api.put("/api/v1/settings/user", json={"bind_mode": mode}).status_code == 200

    yield change
    change("first")


def test_users_are_idempotent_and_phones_masked(api: httpx.Client) -> None:
    external_id = f"e2e-{_tag()}"
    body = {"external_id": external_id, "platform": "shop", "phone": "13812341234"}
    created = api.post("/api/v1/users", json=body)
    assert created.status_code == 201
    again = api.post("/api/v1/users", json=body)
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]
    assert isinstance(created.json()["id"], str)
    fetched = api.get(f"/api/v1/users/{created.json()['id']}").json()
    assert (fetched["platform"], fetched["external_id"]) == ("shop", external_id)
    assert _error(api.get("/api/v1/users/123")) == (404, "user.not_found")
    assert _error(api.get("/api/v1/users/abc")) == (400, "request.bad_id")
    assert api.post("/api/v1/users", json={"platform": "x"}).status_code == 422


def test_promoter_lifecycle_and_code_lookup(api: httpx.Client) -> None:
    user_id = _user(api)
    applied = api.post("/api/v1/promoters", json={"user_id": user_id, "apply": True}).json()
    assert applied["status"] == "pending" and 8 <= len(applied["code"]) <= 12
    approved = api.post(f"/api/v1/promoters/{user_id}/approve")
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    assert api.post(f"/api/v1/promoters/{user_id}/approve").json()["status"] == "approved"
    by_code = api.get(f"/api/v1/promoters/by-code/{applied['code']}").json()
    assert by_code == {**by_code, "user_id": user_id, "code": applied["code"]}
    assert _error(api.get("/api/v1/promoters/by-code/ZZZZZZZZ")) == (
        404,
        "promoter.code_not_found",
    )
    assert api.post(f"/api/v1/promoters/{user_id}/disable").json()["status"] == "disabled"
    assert _error(_bind(api, _user(api), applied["code"])) == (409, "promoter.disabled")
    assert api.post(f"/api/v1/promoters/{user_id}/enable").json()["status"] == "approved"
    assert _error(api.post(f"/api/v1/promoters/{user_id}/reject")) == (
        409,
        "promoter.invalid_transition",
    )


def test_bind_relation_ancestors_children_and_team(api: httpx.Client) -> None:
    top, top_code = _promoter(api)
    mid, mid_code = _promoter(api)
    assert _bind(api, mid, top_code).status_code == 200
    buyers = [_user(api) for _ in range(5)]
    for buyer in buyers:
        bound = _bind(api, buyer, mid_code)
        assert bound.status_code == 200, bound.text
    relation = api.get(f"/api/v1/relations/{buyers[0]}").json()
    assert relation["parent_id"] == mid and relation["root_id"] == top
    assert relation["level"] == 3 and relation["path"] == f",{top},{mid},{buyers[0]},"
    answer = api.get(f"/api/v1/relations/{buyers[0]}/ancestors", params={"levels": 5})
    assert answer.json()["items"] == [{"user_id": mid, "level": 1}, {"user_id": top, "level": 2}]
    # Written by hand (no model on the way out): exactly the declared model's JSON.
    assert (
        answer.content
        == AncestorsOut.model_validate_json(answer.content).model_dump_json().encode()
    )
    assert answer.headers["content-type"] == "application/json"
    one = api.get(f"/api/v1/relations/{buyers[0]}/ancestors", params={"levels": 1}).json()
    assert one == {"items": [{"user_id": mid, "level": 1}]}
    assert api.get(f"/api/v1/relations/{top}/ancestors").json() == {"items": []}
    assert _error(api.get(f"/api/v1/relations/{top}/ancestors", params={"levels": 0})) == (
        400,
        "request.bad_parameter",
    )

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        answer = api.get(f"/api/v1/relations/{mid}/children", params=params)
        assert (
            answer.content
            == ChildrenOut.model_validate_json(answer.content).model_dump_json().encode()
        )
        page = answer.json()
        seen += [item["user_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen, key=int) == sorted(buyers, key=int)

    team = api.get(f"/api/v1/relations/{top}/team").json()
    assert (team["level1_count"], team["level2_count"], team["level3_count"]) == (1, 5, 0)
    _eventually(lambda: api.get(f"/api/v1/relations/{top}/team").json()["team_size"] == 6)

    assert _error(_bind(api, buyers[1], top_code)) == (409, "relation.already_bound")
    assert _error(_bind(api, top, mid_code)) == (409, "relation.cycle")
    assert _error(_bind(api, mid, mid_code)) == (409, "relation.self_bind")
    assert _error(_bind(api, "12", mid_code)) == (404, "user.not_found")
    assert api.post("/api/v1/relations/bind", json={"user_id": "x1"}).status_code == 422
    assert _error(api.get(f"/api/v1/relations/{mid}/children?cursor=zz")) == (
        400,
        "request.bad_cursor",
    )
    history = api.get(f"/api/v1/relations/{buyers[0]}/history").json()["items"]
    assert [(h["kind"], h["parent_id"], h["bind_source"]) for h in history] == [
        ("bind", mid, "link")
    ]


def test_attribution_contract(api: httpx.Client, bind_mode: Any) -> None:
    top, top_code = _promoter(api)
    low, low_code = _promoter(api)
    assert _bind(api, low, top_code).status_code == 200
    buyer = _user(api)
    body = {"buyer_user_id": buyer, "promoter_code": low_code}
    first = api.post("/api/v1/relations/attribution", json=body).json()
    assert first == {
        "buyer_user_id": buyer,
        "promoter_id": low,
        "beneficiaries": [{"level": 1, "user_id": low}, {"level": 2, "user_id": top}],
        "rebound": False,
        "bound": True,
    }
    other, other_code = _promoter(api)
    kept = api.post(
        "/api/v1/relations/attribution",
        json={"buyer_user_id": buyer, "promoter_code": other_code, "levels": 1},
    ).json()
    assert kept["beneficiaries"] == [{"level": 1, "user_id": low}] and not kept["rebound"]
    bind_mode("override")
    moved = api.post(
        "/api/v1/relations/attribution", json={"buyer_user_id": buyer, "promoter_code": other_code}
    ).json()
    assert moved["promoter_id"] == other and moved["rebound"] is True
    assert _error(api.post("/api/v1/relations/attribution", json={"buyer_user_id": "77"})) == (
        404,
        "user.not_found",
    )
    assert (
        api.post(
            "/api/v1/relations/attribution", json={"buyer_user_id": buyer, "levels": 11}
        ).status_code
        == 422
    )


def test_admin_move_rewrites_the_subtree_in_the_background(api: httpx.Client) -> None:
    old_root, old_code = _promoter(api)
    new_root, _ = _promoter(api)
    lead, lead_code = _promoter(api)
    assert _bind(api, lead, old_code).status_code == 200
    members = [_user(api) for _ in range(3)]
    for member in members:
        assert _bind(api, member, lead_code).status_code == 200
    _eventually(lambda: api.get(f"/api/v1/relations/{old_root}/team").json()["team_size"] == 4)

    refused = api.put(
        f"/api/v1/relations/{old_root}/parent", json={"parent_id": members[0], "reason": "x"}
    )
    assert _error(refused) == (409, "relation.cycle")
    moved = api.put(
        f"/api/v1/relations/{lead}/parent", json={"parent_id": new_root, "reason": "region change"}
    )
    assert moved.status_code == 200, moved.text
    job = moved.json()["job"]
    # A small subtree may already be rewritten by the time the response is written.
    assert moved.json()["relation"]["parent_id"] == new_root
    assert job["status"] in ("running", "done")
    done = _eventually(
        lambda: api.get(f"/api/v1/relations/moves/{job['id']}").json()["status"] == "done"
    )
    assert done
    assert api.get(f"/api/v1/relations/moves/{job['id']}").json()["rows_done"] == 3
    relation = api.get(f"/api/v1/relations/{members[0]}").json()
    assert relation["root_id"] == new_root and relation["level"] == 3
    _eventually(lambda: api.get(f"/api/v1/relations/{new_root}/team").json()["team_size"] == 4)
    _eventually(lambda: api.get(f"/api/v1/relations/{old_root}/team").json()["team_size"] == 0)
    new_team = api.get(f"/api/v1/relations/{new_root}/team").json()
    assert (new_team["level1_count"], new_team["level2_count"]) == (1, 3)
    old_team = api.get(f"/api/v1/relations/{old_root}/team").json()
    assert (old_team["level1_count"], old_team["level2_count"]) == (0, 0)


def test_bind_is_served_as_its_contract_says(api: httpx.Client, stack: Any) -> None:
    """The bind endpoint is a lean route (no FastAPI machinery per request): malformed bodies
    are the same 422 envelope, nothing is written for them, the answer has the declared
    fields, the request id is echoed and the metrics name the route."""
    user = _user(api)
    _, code = _promoter(api)
    malformed: list[dict[str, Any]] = [
        {"content": b'{"user_id": ', "headers": {"content-type": "application/json"}},
        {"content": f'{{"user_id": "{user}", "promoter_code": "{code}"}}'.encode()},
        {"json": {"user_id": user, "promoter_code": ""}},
        {"json": {"user_id": user, "promoter_code": code, "source": "fax"}},
        {"json": {"user_id": "0", "promoter_code": code}},
        {"json": [user, code]},
    ]
    for request in malformed:
        refused = api.post("/api/v1/relations/bind", **request)
        assert _error(refused) == (422, "request.invalid"), (request, refused.text)
        problems = refused.json()["error"]["details"]["errors"]
        assert problems and all(problem["loc"][0] == "body" for problem in problems)

    direct = f"{stack.service_url('user')}/api/v1/relations/bind"
    anonymous = httpx.post(
        direct,
        json={"user_id": user, "promoter_code": code},
        headers={"X-Request-ID": "lean-refused"},
    )
    assert _error(anonymous) == (401, "auth.unauthenticated")
    assert anonymous.headers["x-request-id"] == "lean-refused"

    request_id = f"lean-{_tag()}"
    bound = api.post(
        "/api/v1/relations/bind",
        json={"user_id": user, "promoter_code": code, "source": "qr"},
        headers={"X-Request-ID": request_id},
    )
    assert bound.status_code == 200, bound.text
    assert bound.headers["x-request-id"] == request_id
    assert bound.headers["content-type"] == "application/json"
    answer = bound.json()
    assert set(answer) == {
        "user_id",
        "parent_id",
        "root_id",
        "level",
        "path",
        "bound_at",
        "bind_source",
        "expires_at",
        "active",
        "changed",
    }
    # Written once, by the valid request only.
    assert (answer["user_id"], answer["bind_source"], answer["changed"]) == (user, "qr", True)
    history = api.get(f"/api/v1/relations/{user}/history").json()["items"]
    assert [item["bind_source"] for item in history] == ["qr"]
    schema = api.get("/openapi.json").json()
    assert "/api/v1/relations/bind" in schema["paths"]

    metrics = httpx.get(f"{stack.service_url('user')}/metrics").text
    for status in (200, 401, 422):
        assert f'path="/api/v1/relations/bind",service="user",status="{status}"' in metrics.replace(
            'method="POST",', ""
        )


def test_relation_reads_are_served_as_their_contract_says(api: httpx.Client, stack: Any) -> None:
    """Ancestors, children and team are lean routes: the same answers, the same refusals of
    bad parameters (400, located), 401 without credentials, metrics by route template."""
    top, code = _promoter(api)
    child = _user(api)
    assert _bind(api, child, code).status_code == 200
    base = f"/api/v1/relations/{child}"
    assert api.get(f"{base}/ancestors", params={"levels": 10_000}).json() == {
        "items": [{"user_id": top, "level": 1}]
    }
    children = api.get(f"/api/v1/relations/{top}/children", params={"limit": 500}).json()
    assert children["items"][0]["user_id"] == child and children["next_cursor"] is None
    team = api.get(f"/api/v1/relations/{top}/team")
    assert team.headers["content-type"] == "application/json"
    assert set(team.json()) == {
        "user_id",
        "level1_count",
        "level2_count",
        "level3_count",
        "team_size",
    }
    assert team.json()["level1_count"] == 1

    for path, params, field in [
        ("ancestors", {"levels": 0}, "levels"),
        ("ancestors", {"levels": 10_001}, "levels"),
        ("ancestors", {"levels": "three"}, "levels"),
        ("children", {"limit": 501}, "limit"),
        ("children", {"limit": ""}, "limit"),
    ]:
        refused = api.get(f"{base}/{path}", params=params)
        assert _error(refused) == (400, "request.bad_parameter"), (path, params, refused.text)
        assert [p["loc"] for p in refused.json()["error"]["details"]["errors"]] == [
            ["query", field]
        ]
    for path in ("ancestors", "children", "team"):
        assert _error(api.get(f"/api/v1/relations/0/{path}"))[0] == 400  # not an id
        assert _error(api.get(f"/api/v1/relations/x{child}/{path}"))[0] == 400
        anonymous = httpx.get(f"{stack.service_url('user')}{base}/{path}")
        assert _error(anonymous) == (401, "auth.unauthenticated")

    metrics = httpx.get(f"{stack.service_url('user')}/metrics").text.replace('method="GET",', "")
    for path, statuses in [("ancestors", (200, 400, 401)), ("children", (200, 400, 401))]:
        for status in statuses:
            assert (
                f'path="/api/v1/relations/{{user_id}}/{path}",service="user",status="{status}"'
                in metrics
            )
    assert 'path="/api/v1/relations/{user_id}/team",service="user",status="200"' in metrics
