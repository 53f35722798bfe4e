"""Who gets in through the gateway: JWTs (checked for signature, exp, nbf, iss, aud), platform
API keys (bearer or HMAC-signed, replay-protected), promoter tokens minted by platforms."""

from __future__ import annotations

import json
import secrets
import time

import httpx
import jwt
import pytest

from deploy.local.stack import Stack
from gateway.signatures import sign_request
from tests.gateway.conftest import bearer, token


def _user(api: httpx.Client, platform: str, phone: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {"external_id": secrets.token_hex(6), "platform": platform}
    if phone:
        body["phone"] = phone
    response = api.post("/api/v1/users", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _claims(stack: Stack, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": "tuike",
        "aud": "tuike-api",
        "sub": "123",
        "roles": ["promoter"],
        "exp": now + 600,
        "nbf": now - 5,
    }
    claims.update(overrides)
    return claims


@pytest.mark.parametrize(
    "overrides, code",
    [
        ({"exp": int(time.time()) - 3600}, "auth.token_expired"),
        ({"nbf": int(time.time()) + 3600}, "auth.invalid_token"),
        ({"iss": "someone-else"}, "auth.invalid_token"),
        ({"aud": "another-api"}, "auth.invalid_token"),
    ],
    ids=["expired", "not-yet-valid", "wrong-issuer", "wrong-audience"],
)
def test_a_jwt_failing_a_claim_check_is_refused_with_401(
    stack: Stack, gateway: httpx.Client, overrides: dict[str, object], code: str
) -> None:
    forged = jwt.encode(_claims(stack, **overrides), stack.config.jwt_secret, algorithm="HS256")
    response = gateway.get("/api/v1/users/123", headers=bearer(forged))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == code


def test_a_jwt_signed_with_another_key_or_none_is_refused(
    stack: Stack, gateway: httpx.Client
) -> None:
    wrong_key = jwt.encode(_claims(stack), "not-the-secret-" * 3, algorithm="HS256")
    unsigned = jwt.encode(_claims(stack), None, algorithm="none")  # type: ignore[arg-type]
    for forged in (wrong_key, unsigned, "a.b.c"):
        response = gateway.get("/api/v1/users/123", headers=bearer(forged))
        assert response.status_code == 401, forged
        assert response.json()["error"]["code"].startswith("auth.")


def test_a_token_cannot_claim_the_internal_service_role(
    stack: Stack, gateway: httpx.Client
) -> None:
    sneaky = token(stack, 123, "service")
    response = gateway.get("/api/v1/users/123", headers=bearer(sneaky))
    assert response.status_code == 403
    assert response.headers["X-Tuike-Refused-By"] == "gateway"


def test_the_internal_key_is_not_accepted_from_outside(stack: Stack, gateway: httpx.Client) -> None:
    response = gateway.get("/api/v1/users/123", headers=bearer(stack.config.internal_key))
    assert response.status_code == 401


def test_a_promoter_reads_its_own_user_but_not_another(
    stack: Stack, api: httpx.Client, gateway: httpx.Client
) -> None:
    me, other = _user(api, "default"), _user(api, "default")
    mine = token(stack, str(me["id"]), "promoter")
    own = gateway.get(f"/api/v1/users/{me['id']}", headers=bearer(mine))
    assert own.status_code == 200, own.text
    assert own.json()["id"] == me["id"]
    theirs = gateway.get(f"/api/v1/users/{other['id']}", headers=bearer(mine))
    assert theirs.status_code == 403
    assert theirs.json()["error"]["code"] == "auth.forbidden"
    assert theirs.headers["X-Tuike-Refused-By"] == "gateway"


def test_api_keys_are_shown_once_listed_without_secret_and_revocable(
    api: httpx.Client, gateway: httpx.Client
) -> None:
    created = api.post("/api/v1/api-keys", json={"platform": "shop-keys", "name": "backend"})
    assert created.status_code == 201
    body = created.json()
    full = body["api_key"]
    assert full.startswith(f"tk_{body['key_id']}_")
    assert body["status"] == "active"

    listed = api.get("/api/v1/api-keys", params={"platform": "shop-keys"}).json()["items"]
    assert [k["key_id"] for k in listed] == [body["key_id"]]
    assert full not in json.dumps(listed)
    assert "api_key" not in listed[0]

    user = {"external_id": secrets.token_hex(6), "platform": "shop-keys"}
    assert gateway.post("/api/v1/users", json=user, headers=bearer(full)).status_code == 201

    revoked = api.delete(f"/api/v1/api-keys/{body['key_id']}")
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    again = api.delete(f"/api/v1/api-keys/{body['key_id']}")
    assert again.status_code == 200  # revoking twice is a no-op
    refused = gateway.post("/api/v1/users", json=user, headers=bearer(full))
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "auth.invalid_key"
    assert api.delete("/api/v1/api-keys/nope").json()["error"]["code"] == "api_key.not_found"


def test_a_platform_key_acts_only_for_its_own_platform(
    platform_key: object, gateway: httpx.Client
) -> None:
    key = platform_key("shop-own")  # type: ignore[operator]
    body = {"external_id": secrets.token_hex(6), "platform": "shop-other"}
    response = gateway.post("/api/v1/users", json=body, headers=bearer(key))
    assert response.status_code == 403
    assert response.headers["X-Tuike-Refused-By"] == "gateway"


def test_signed_requests_pass_and_tampered_stale_or_replayed_ones_do_not(
    platform_key: object, gateway: httpx.Client
) -> None:
    key = platform_key("shop-signed")  # type: ignore[operator]
    body = json.dumps({"external_id": secrets.token_hex(6), "platform": "shop-signed"}).encode()
    json_type = {"Content-Type": "application/json"}

    headers = sign_request(key, "POST", "/api/v1/users", body)
    first = gateway.post("/api/v1/users", content=body, headers={**headers, **json_type})
    assert first.status_code == 201, first.text
    assert first.json()["platform"] == "shop-signed"

    replay = gateway.post("/api/v1/users", content=body, headers={**headers, **json_type})
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "auth.replayed"

    tampered_headers = sign_request(key, "POST", "/api/v1/users", body)
    tampered = body.replace(b"shop-signed", b"shop-signeX")
    response = gateway.post(
        "/api/v1/users", content=tampered, headers={**tampered_headers, **json_type}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "auth.bad_signature"

    stale = sign_request(key, "POST", "/api/v1/users", body, timestamp=int(time.time()) - 3600)
    response = gateway.post("/api/v1/users", content=body, headers={**stale, **json_type})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "auth.stale_request"

    other_path = sign_request(key, "POST", "/api/v1/orders", body)
    response = gateway.post("/api/v1/users", content=body, headers={**other_path, **json_type})
    assert response.status_code == 401


def test_a_platform_mints_a_promoter_token_for_its_own_users_only(
    api: httpx.Client, platform_key: object, gateway: httpx.Client
) -> None:
    key = platform_key("shop-tokens")  # type: ignore[operator]
    mine = _user(api, "shop-tokens")
    foreign = _user(api, "shop-elsewhere")

    minted = gateway.post(
        "/api/v1/auth/tokens", json={"user_id": mine["id"], "ttl_seconds": 120}, headers=bearer(key)
    )
    assert minted.status_code == 201, minted.text
    body = minted.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 120
    assert body["user_id"] == mine["id"]
    assert body["platform"] == "shop-tokens"

    # The token logs the user in: it reads its own user, not someone else's.
    own = gateway.get(f"/api/v1/users/{mine['id']}", headers=bearer(body["access_token"]))
    assert own.status_code == 200
    other = gateway.get(f"/api/v1/users/{foreign['id']}", headers=bearer(body["access_token"]))
    assert other.status_code == 403

    refused = gateway.post(
        "/api/v1/auth/tokens", json={"user_id": foreign["id"]}, headers=bearer(key)
    )
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "user.not_found"
    missing = gateway.post("/api/v1/auth/tokens", json={"user_id": "999"}, headers=bearer(key))
    assert missing.status_code == 404

    # A promoter cannot mint tokens, and nobody anonymous can.
    promoter = bearer(body["access_token"])
    assert (
        gateway.post(
            "/api/v1/auth/tokens", json={"user_id": mine["id"]}, headers=promoter
        ).status_code
        == 403
    )
    assert gateway.post("/api/v1/auth/tokens", json={"user_id": mine["id"]}).status_code == 401


def test_personal_data_is_masked_unless_the_caller_may_read_it(
    stack: Stack, api: httpx.Client, gateway: httpx.Client
) -> None:
    user = _user(api, "default", phone="13812341234")
    plain = token(stack, str(user["id"]), "promoter")
    allowed = token(stack, str(user["id"]), "promoter", scopes=["pii:read"])
    masked = gateway.get(f"/api/v1/users/{user['id']}", headers=bearer(plain))
    assert masked.status_code == 200
    assert masked.json()["phone"] == "138****1234"
    clear = gateway.get(f"/api/v1/users/{user['id']}", headers=bearer(allowed))
    assert clear.json()["phone"] == "13812341234"


def test_authentication_comes_before_body_validation(
    api: httpx.Client, gateway: httpx.Client
) -> None:
    malformed = {"Content-Type": "application/json"}
    for path in ("/api/v1/auth/tokens", "/api/v1/api-keys", "/api/v1/users"):
        anonymous = gateway.post(path, content=b"{not json", headers=malformed)
        assert anonymous.status_code == 401, path
        assert anonymous.json()["error"]["code"] == "auth.unauthenticated"
    # Authenticated, the same body is a 422 in the envelope.
    admitted = api.post("/api/v1/api-keys", content=b"{not json", headers=malformed)
    assert admitted.status_code == 422
    assert admitted.json()["error"]["code"] == "request.invalid"
