"""Orders end to end through the gateway and the broker, with the real user service:
the attribution snapshot, the lifecycle, refunds, by-number calls, and the events a
consumer reads from order.events."""

from __future__ import annotations

import time

import httpx

from deploy.local.stack import Stack
from tests.order.e2e_helpers import bind, new_promoter, new_user, order_json, topic_events, wait_for


def test_order_of_a_bound_buyer_snapshots_the_chain_and_publishes_its_events(
    stack: Stack, api: httpx.Client
) -> None:
    grandparent, grandparent_code = new_promoter(api)
    parent, parent_code = new_promoter(api, grandparent_code)
    buyer = new_user(api)
    bind(api, buyer, parent_code)
    created = api.post("/api/v1/orders", json=order_json(buyer))
    assert created.status_code == 201, created.text
    order = created.json()
    assert order["attribution_status"] == "resolved"
    assert order["promoter_id"] == parent
    assert order["beneficiaries"] == [
        {"level": 1, "user_id": parent},
        {"level": 2, "user_id": grandparent},
    ]
    assert order["status"] == "created" and order["paid_amount"] == 12001
    order_id = order["id"]
    paid = api.post(f"/api/v1/orders/{order_id}/pay")
    assert paid.status_code == 200 and paid.json()["status"] == "paid"
    refund = api.post(
        f"/api/v1/orders/{order_id}/refunds", json={"refund_no": "R1", "amount": 1000}
    )
    assert refund.status_code == 201, refund.text
    assert [(i["refunded_amount"], i["remaining_paid_amount"]) for i in refund.json()["items"]] == [
        (750, 8250),
        (250, 2751),
    ]
    completed = api.post(f"/api/v1/orders/{order_id}/complete", json={})
    assert completed.json()["status"] == "completed"
    stored = api.get(f"/api/v1/orders/{order_id}").json()
    assert stored["refunded_amount"] == 1000
    assert [i["refunded_amount"] for i in stored["items"]] == [750, 250]
    events = topic_events(stack, order_id, 4)
    assert [e["type"] for e in events] == [
        "order.created",
        "order.paid",
        "order.refunded",
        "order.completed",
    ]
    paid_event = events[1]["data"]
    assert paid_event["promoter_id"] == parent
    assert paid_event["beneficiaries"][0] == {"level": 1, "user_id": parent}
    assert events[2]["data"]["refund_no"] == "R1"


def test_promoter_code_binds_a_buyer_without_a_binding(api: httpx.Client) -> None:
    promoter, code = new_promoter(api)
    buyer = new_user(api)
    order = api.post("/api/v1/orders", json=order_json(buyer, promoter_code=code)).json()
    assert order["promoter_id"] == promoter
    assert order["beneficiaries"] == [{"level": 1, "user_id": promoter}]
    relation = api.get(f"/api/v1/relations/{buyer}").json()
    assert relation["parent_id"] == promoter
    # A buyer with nobody above and no code: attribution none.
    lonely = new_user(api)
    nobody = api.post("/api/v1/orders", json=order_json(lonely)).json()
    assert nobody["attribution_status"] == "none"
    assert nobody["promoter_id"] is None and nobody["beneficiaries"] == []


def test_refusals_through_the_gateway(api: httpx.Client) -> None:
    buyer = new_user(api)
    body = order_json(buyer)
    assert api.post("/api/v1/orders", json=body).status_code == 201
    replay = api.post("/api/v1/orders", json=body)
    assert replay.status_code == 200
    conflict = api.post("/api/v1/orders", json={**body, "shipping_amount": 1})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "order.duplicate_conflict"
    unknown = api.post("/api/v1/orders", json=order_json("123456789012"))
    assert unknown.status_code == 400
    assert unknown.json()["error"]["code"] == "order.unknown_buyer"
    malformed = api.post("/api/v1/orders", json={**order_json(buyer), "items": "nope"})
    assert malformed.status_code == 422
    assert malformed.json()["error"]["code"] == "request.invalid"
    currency = api.post("/api/v1/orders", json=order_json(buyer, currency="XXX"))
    assert currency.status_code == 400
    assert currency.json()["error"]["code"] == "order.unsupported_currency"
    assert api.get("/api/v1/orders/12345").json()["error"]["code"] == "order.not_found"
    assert api.get("/api/v1/orders/abc").json()["error"]["code"] == "request.bad_id"
    order_id = replay.json()["id"]
    not_paid = api.post(f"/api/v1/orders/{order_id}/complete")
    assert not_paid.status_code == 409
    assert not_paid.json()["error"]["code"] == "order.not_paid"
    assert api.post(f"/api/v1/orders/{order_id}/close").status_code == 200
    closed = api.post(f"/api/v1/orders/{order_id}/pay")
    assert closed.status_code == 409 and closed.json()["error"]["code"] == "order.closed"
    anonymous = httpx.post(f"{api.base_url}/api/v1/orders", json=body)
    assert anonymous.status_code == 401


def test_every_call_works_by_the_platforms_number(api: httpx.Client) -> None:
    buyer = new_user(api)
    body = order_json(buyer)
    order_id = api.post("/api/v1/orders", json=body).json()["id"]
    base = f"/api/v1/orders/by-number/e2e/{body['order_no']}"
    assert api.get(base).json()["id"] == order_id
    assert api.post(f"{base}/pay").json()["status"] == "paid"
    refund = api.post(f"{base}/refunds", json={"refund_no": "R9", "items": [{"sku": "B"}]})
    assert refund.status_code == 201
    again = api.post(f"{base}/refunds", json={"refund_no": "R9", "items": [{"sku": "B"}]})
    assert again.status_code == 200 and again.json()["id"] == refund.json()["id"]
    listed = api.get(f"{base}/refunds").json()["items"]
    assert [(r["refund_no"], r["amount"]) for r in listed] == [("R9", 3001)]
    assert api.post(f"{base}/complete").json()["status"] == "completed"
    missing = api.get("/api/v1/orders/by-number/e2e/NOPE")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "order.not_found"


def test_unavailable_user_service_leaves_the_order_pending_until_it_returns(
    stack: Stack, api: httpx.Client
) -> None:
    promoter, code = new_promoter(api)
    buyer = new_user(api)
    bind(api, buyer, code)
    stack.kill("user")
    try:
        # While the user service is away, nobody can tell whether a buyer exists either.
        stranger = api.post("/api/v1/orders", json=order_json("987654321012345"))
        assert stranger.status_code == 201, stranger.text
        assert stranger.json()["attribution_status"] == "pending"
        created = api.post("/api/v1/orders", json=order_json(buyer))
        assert created.status_code == 201, created.text
        order = created.json()
        assert order["attribution_status"] == "pending"
        assert order["promoter_id"] is None
        order_id = order["id"]
        assert api.post(f"/api/v1/orders/{order_id}/pay").json()["status"] == "paid"
        # Held back: commission must not see an order.paid without its beneficiaries.
        assert [e["type"] for e in topic_events(stack, order_id, 1, timeout=3)] == ["order.created"]
    finally:
        stack.restart_service("user")
    resolved = wait_for(
        lambda: (
            (o := api.get(f"/api/v1/orders/{order_id}").json())["attribution_status"] == "resolved"
            and o
        ),
        timeout=60,
    )
    assert resolved["promoter_id"] == promoter
    assert resolved["beneficiaries"] == [{"level": 1, "user_id": promoter}]
    events = topic_events(stack, order_id, 2)
    assert [e["type"] for e in events] == ["order.created", "order.paid"]
    assert events[1]["data"]["beneficiaries"] == [{"level": 1, "user_id": promoter}]
    # The unknown buyer's order resolves to nobody: kept, attribution none.
    unknown = wait_for(
        lambda: (
            (o := api.get(f"/api/v1/orders/{stranger.json()['id']}").json())["attribution_status"]
            != "pending"
            and o
        ),
        timeout=60,
    )
    assert unknown["attribution_status"] == "none" and unknown["beneficiaries"] == []


def test_the_binding_wins_over_a_code_unless_the_mode_is_override(api: httpx.Client) -> None:
    first, first_code = new_promoter(api)
    second, second_code = new_promoter(api)
    buyer = new_user(api)
    bind(api, buyer, first_code)
    order = api.post("/api/v1/orders", json=order_json(buyer, promoter_code=second_code)).json()
    assert order["promoter_id"] == first
    before = api.get("/api/v1/settings/user").json()["bind_mode"]
    assert api.put("/api/v1/settings/user", json={"bind_mode": "override"}).status_code == 200
    try:
        time.sleep(1.1)  # settings are in force in every process within a second
        again = api.post("/api/v1/orders", json=order_json(buyer, promoter_code=second_code))
        assert again.json()["promoter_id"] == second
        assert api.get(f"/api/v1/relations/{buyer}").json()["parent_id"] == second
    finally:
        api.put("/api/v1/settings/user", json={"bind_mode": before})
        time.sleep(1.1)


def test_order_settings(api: httpx.Client) -> None:
    assert api.get("/api/v1/settings/order").json() == {
        "auto_complete_days": 15,
        "attribution_levels": 3,
    }
    refused = api.put("/api/v1/settings/order", json={"auto_complete_days": -1})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "settings.invalid"
    changed = api.put("/api/v1/settings/order", json={"attribution_levels": 1})
    try:
        assert changed.json()["attribution_levels"] == 1
        time.sleep(1.1)
        _, grandparent_code = new_promoter(api)
        parent, parent_code = new_promoter(api, grandparent_code)
        buyer = new_user(api)
        bind(api, buyer, parent_code)
        order = api.post("/api/v1/orders", json=order_json(buyer)).json()
        assert order["beneficiaries"] == [{"level": 1, "user_id": parent}]
    finally:
        api.put("/api/v1/settings/order", json={"attribution_levels": 3})
        time.sleep(1.1)
