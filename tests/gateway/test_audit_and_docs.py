"""The audit log (who, what, when, before/after; admins read it) and the one merged API
document at /openapi.json and /docs."""

from __future__ import annotations

import secrets

import httpx

from deploy.local.stack import Stack
from gateway.keys import GATEWAY_MIGRATIONS
from libs.common import audit
from libs.common.auth import Caller
from libs.common.db.engine import Database, Tx
from libs.common.db.migrations import migrate
from tests.gateway.conftest import bearer, token


def test_admin_and_finance_writes_are_in_the_gateway_audit_log(
    stack: Stack, api: httpx.Client, gateway: httpx.Client
) -> None:
    external_id = secrets.token_hex(6)
    created = api.post("/api/v1/users", json={"external_id": external_id, "phone": "13900001111"})
    assert created.status_code == 201
    finance = bearer(token(stack, "9001", "finance"))
    gateway.post("/api/v1/withdrawals/1/approve", headers=finance, json={})
    # Reads are not audited.
    api.get(f"/api/v1/users/{created.json()['id']}")

    entries = api.get("/api/v1/audit/gateway", params={"limit": 100}).json()["items"]
    mine = [e for e in entries if e["after"] and external_id in str(e["after"])]
    assert len(mine) == 1
    entry = mine[0]
    assert entry["actor"] == "bootstrap-admin"
    assert entry["actor_roles"] == ["admin"]
    assert entry["action"] == "POST /api/v1/users"
    assert entry["target_type"] == "user"
    assert entry["status"] == 201
    # Personal data is masked in the log as well.
    assert entry["after"]["request"]["phone"] == "139****1111"
    assert entry["request_id"]

    by_finance = api.get("/api/v1/audit/gateway", params={"actor": "9001"}).json()["items"]
    assert [e["action"] for e in by_finance] == ["POST /api/v1/withdrawals/{withdrawal_id}/approve"]
    # Only admins read the log.
    assert gateway.get("/api/v1/audit/gateway", headers=finance).status_code == 403


def test_api_key_changes_carry_before_and_after(api: httpx.Client) -> None:
    key_id = api.post("/api/v1/api-keys", json={"platform": "shop-audit"}).json()["key_id"]
    api.delete(f"/api/v1/api-keys/{key_id}")
    entries = api.get("/api/v1/audit/gateway", params={"limit": 200}).json()["items"]
    mine = {e["action"]: e for e in entries if e["target_id"] == key_id}
    assert mine["api_key.create"]["after"]["platform"] == "shop-audit"
    assert "secret_sha256" not in mine["api_key.create"]["after"]
    assert mine["api_key.revoke"]["before"] == {"revoked_at": None}
    assert mine["api_key.revoke"]["after"]["revoked_at"]


def test_each_service_serves_its_audit_log_to_admins(api: httpx.Client) -> None:
    for service in ("user", "order", "commission", "stats"):
        response = api.get(f"/api/v1/audit/{service}")
        assert response.status_code == 200, (service, response.text)
        assert "items" in response.json()


async def test_audit_rows_page_newest_first(db: Database) -> None:
    await migrate(db, GATEWAY_MIGRATIONS)
    admin = Caller(subject="alice", roles=frozenset({"admin", "finance"}))

    async def write(tx: Tx) -> None:
        for n in range(5):
            await audit.record(
                await tx.main(),
                admin,
                "withdrawal.approve",
                "withdrawal",
                n,
                before={"status": "pending"},
                after={"status": "approved", "amount": 1000 + n},
                status=200,
            )

    await db.run(write)
    async with db.read() as conn:
        first = await audit.list_entries(conn, limit=3)
        assert [e.target_id for e in first.items] == ["4", "3", "2"]
        assert first.items[0].after == {"status": "approved", "amount": 1004}
        assert first.items[0].actor_roles == ["admin", "finance"]
        rest = await audit.list_entries(conn, limit=3, cursor=int(first.next_cursor or 0))
        assert [e.target_id for e in rest.items] == ["1", "0"]
        assert rest.next_cursor is None
        assert (await audit.list_entries(conn, actor="bob")).items == []


def test_one_document_merges_every_service(stack: Stack, gateway: httpx.Client) -> None:
    document = gateway.get("/openapi.json").json()
    paths = document["paths"]
    for path in (
        "/api/v1/users",
        "/api/v1/orders",
        "/api/v1/stats/leaderboard",
        "/api/v1/auth/tokens",
    ):
        assert path in paths, path
    # Each service's paths only: the commission service's order lines, not the order service's.
    assert "get" in paths["/api/v1/orders/{order_id}/commissions"]
    assert set(document["components"]["securitySchemes"]) == {"bearerAuth", "apiKeySignature"}
    assert document["security"] == [{"bearerAuth": []}, {"apiKeySignature": []}]
    envelope = document["components"]["schemas"]["ErrorEnvelope"]
    assert envelope["required"] == ["error"]
    operation = paths["/api/v1/users"]["post"]
    assert operation["responses"]["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorEnvelope"
    }
    assert operation["x-tuike-roles"] == ["admin", "platform"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    webhooks = [p for p in paths if p.startswith("/api/v1/webhooks/")]
    assert all(paths[p]["post"]["security"] == [] for p in webhooks)

    docs = gateway.get("/docs")
    assert docs.status_code == 200
    assert "/openapi.json" in docs.text
