"""JWT verification in libs/common/auth.py (used by the gateway and every service): HS256,
RS256 with a PEM public key or a JWKS file, claim checks, role and scope parsing; and the
gateway's response masking."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.masking import mask_json_body
from gateway.permissions import PERMISSIONS
from libs.common.auth import TOKEN_ROLES, authenticate_token, gateway_assertion, make_token
from libs.common.errors import Unauthorized
from libs.common.settings import CommonSettings

ISSUER, AUDIENCE = "tuike", "tuike-api"


def _claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "1001",
        "roles": ["promoter", "finance"],
        "scope": "pii:read other",
        "exp": now + 300,
    }
    claims.update(overrides)
    return claims


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_hs256_token_becomes_a_caller_with_roles_and_scopes() -> None:
    settings = CommonSettings(jwt_secret="s" * 32)
    caller = authenticate_token(
        make_token(settings, 1001, ["promoter"], scopes=["pii:read"]), settings
    )
    assert caller.user_id == 1001
    assert caller.roles == frozenset({"promoter"})
    assert caller.may_read_pii()


def test_rs256_with_a_public_key_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    path = tmp_path / "public.pem"
    path.write_text(_public_pem(rsa_key))
    settings = CommonSettings(jwt_public_key=str(path))
    caller = authenticate_token(jwt.encode(_claims(), rsa_key, algorithm="RS256"), settings)
    assert caller.roles == frozenset({"promoter", "finance"})
    assert caller.scopes == frozenset({"pii:read", "other"})


def test_rs256_with_a_jwks_file_picks_the_key_by_kid(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys = []
    for kid, key in (("old", other), ("current", rsa_key)):
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    settings = CommonSettings(jwt_jwks_file=str(path))
    good = jwt.encode(_claims(), rsa_key, algorithm="RS256", headers={"kid": "current"})
    assert authenticate_token(good, settings).user_id == 1001
    wrong_kid = jwt.encode(_claims(), rsa_key, algorithm="RS256", headers={"kid": "old"})
    with pytest.raises(Unauthorized):
        authenticate_token(wrong_kid, settings)


def test_the_public_key_is_never_used_as_an_hmac_secret(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = _public_pem(rsa_key)
    settings = CommonSettings(jwt_public_key=pem)

    # Forged by hand: PyJWT itself refuses to sign HS256 with a PEM key.
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    signing_input = f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(_claims())}"
    mac = hmac.new(pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    confused = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(Unauthorized) as refused:
        authenticate_token(confused, settings)
    assert refused.value.code == "auth.invalid_token"


def test_claims_are_checked_and_unknown_roles_dropped() -> None:
    settings = CommonSettings(jwt_secret="s" * 32)

    def sign(**overrides: object) -> str:
        return jwt.encode(_claims(**overrides), "s" * 32, algorithm="HS256")

    with pytest.raises(Unauthorized) as expired:
        authenticate_token(sign(exp=int(time.time()) - 120), settings)
    assert expired.value.code == "auth.token_expired"
    for bad in (sign(aud="x"), sign(iss="x"), sign(nbf=int(time.time()) + 600)):
        with pytest.raises(Unauthorized):
            authenticate_token(bad, settings)
    no_subject = _claims()
    del no_subject["sub"]
    with pytest.raises(Unauthorized):
        authenticate_token(jwt.encode(no_subject, "s" * 32, algorithm="HS256"), settings)
    caller = authenticate_token(sign(roles=["service", "root", "admin"]), settings)
    assert caller.roles == frozenset({"admin"})


def test_gateway_assertions_carry_a_platform_caller_to_services() -> None:
    settings = CommonSettings(internal_api_key="internal-" * 4)
    from libs.common.auth import Caller

    platform = Caller(subject="platform:shop:abc", roles=frozenset({"platform"}), platform="shop")
    caller = authenticate_token(
        gateway_assertion(platform, settings.internal_api_key or ""), settings
    )
    assert caller.roles == frozenset({"platform"})
    assert caller.platform == "shop"
    other = CommonSettings(internal_api_key="another-" * 4)
    with pytest.raises(Unauthorized):
        authenticate_token(gateway_assertion(platform, "internal-" * 4), other)


def test_the_gateway_masks_personal_data_that_arrives_in_clear() -> None:
    body = json.dumps(
        {
            "items": [
                {
                    "phone": "13812341234",
                    "real_name": "张三丰",
                    "id_number": "110101199003074518",
                    "bank_card": "6222021234567890123",
                    "email": "alice@example.com",
                    "nickname": "Alice",
                }
            ],
            "already": {"phone": "138****1234"},
        },
        ensure_ascii=False,
    ).encode()
    masked = json.loads(mask_json_body(body))
    assert masked["items"][0] == {
        "phone": "138****1234",
        "real_name": "张**",
        "id_number": "1****************8",
        "bank_card": "尾号0123",
        "email": "a****@example.com",
        "nickname": "Alice",
    }
    assert masked["already"] == {"phone": "138****1234"}
    untouched = b'{"id":"1","status":"frozen"}'
    assert mask_json_body(untouched) is untouched


def test_the_permission_table_names_only_known_roles_and_templates() -> None:
    names = [rule.name for rule in PERMISSIONS]
    assert len(names) == len(set(names))
    for rule in PERMISSIONS:
        assert rule.roles <= TOKEN_ROLES - {"admin"}, rule.name
        assert rule.template.startswith(("/api/v1/", "/s/")), rule.name
        for spec in (rule.promoter_self, rule.platform_field):
            if spec is not None:
                assert spec.split(":")[0] in ("path", "query", "body"), rule.name
                if spec.startswith("path:"):
                    assert "{" + spec.split(":")[1] + "}" in rule.template, rule.name


def test_a_remembered_token_still_expires() -> None:
    settings = CommonSettings(jwt_secret="r" * 32, jwt_leeway_seconds=0)
    short = make_token(settings, 1001, ["promoter"], ttl_seconds=1)
    assert authenticate_token(short, settings).user_id == 1001
    assert authenticate_token(short, settings).user_id == 1001  # from the cache
    time.sleep(2.1)
    with pytest.raises(Unauthorized) as expired:
        authenticate_token(short, settings)
    assert expired.value.code == "auth.token_expired"
