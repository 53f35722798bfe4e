"""Load test of a Tuike deployment through its gateway (``make load HOST=http://...``).

A realistic mix for a distribution platform: new buyers arrive and are bound under a
promoter by a share link, buyers place and pay orders (the platform's intake), some orders are
completed, and promoters' apps read their commissions, balance, stats and the leaderboard.

Each simulated client first creates its own approved promoter (the admin path of a platform
onboarding promoters). Requests are named by route template, so the summary shows one line
per route. Settings (environment): ``TUIKE_LOAD_TOKEN`` — the bearer token (default the dev
stack's ``dev-admin-key``; admin callers are not rate limited, so the gateway's limits do not
cap the figures); ``TUIKE_LOAD_PLATFORM`` — the platform name the test data is written under
(default ``loadtest``), so it never mixes with real users.
"""

from __future__ import annotations

import os
import random
import uuid
from collections import deque
from datetime import date, timedelta
from typing import Any

from locust import HttpUser, between, events, task
from locust.env import Environment

TOKEN = os.environ.get("TUIKE_LOAD_TOKEN", "dev-admin-key")
PLATFORM = os.environ.get("TUIKE_LOAD_PLATFORM", "loadtest")
CATEGORIES = ("apparel", "beauty", "food", "digital")


class PlatformClient(HttpUser):
    """One platform backend and the promoter / buyer apps behind it."""

    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.client.headers["Authorization"] = f"Bearer {TOKEN}"
        self.buyers: deque[str] = deque(maxlen=200)
        self.orders: deque[str] = deque(maxlen=200)
        self.paid: deque[str] = deque(maxlen=200)
        self.promoter_id: str | None = None
        self.promoter_code: str | None = None
        user_id = self._create_user()
        if user_id is None:
            return
        with self.client.post(
            "/api/v1/promoters",
            json={"user_id": user_id},
            name="/api/v1/promoters",
            catch_response=True,
        ) as response:
            if response.status_code not in (200, 201):
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return
            self.promoter_code = response.json()["code"]
        self.client.post(
            f"/api/v1/promoters/{user_id}/approve", name="/api/v1/promoters/{user_id}/approve"
        )
        self.promoter_id = user_id

    def _create_user(self) -> str | None:
        body = {"external_id": uuid.uuid4().hex, "platform": PLATFORM, "nickname": "load"}
        with self.client.post(
            "/api/v1/users", json=body, name="/api/v1/users", catch_response=True
        ) as response:
            if response.status_code not in (200, 201):
                response.failure(f"{response.status_code}: {response.text[:200]}")
                return None
            return str(response.json()["id"])

    @task(3)
    def new_buyer_binds_by_share_link(self) -> None:
        buyer = self._create_user()
        if buyer is None or self.promoter_code is None:
            return
        response = self.client.post(
            "/api/v1/relations/bind",
            json={"user_id": buyer, "promoter_code": self.promoter_code, "source": "link"},
            name="/api/v1/relations/bind",
        )
        if response.ok:
            self.buyers.append(buyer)

    @task(4)
    def buyer_places_and_pays_an_order(self) -> None:
        if not self.buyers:
            return
        items = []
        for index in range(random.randint(1, 3)):
            quantity = random.randint(1, 3)
            unit_price = random.choice((990, 1990, 4990, 12800))
            items.append(
                {
                    "sku": f"SKU-{index}-{unit_price}",
                    "category": random.choice(CATEGORIES),
                    "quantity": quantity,
                    "unit_price_amount": unit_price,
                    "paid_amount": unit_price * quantity - random.choice((0, 0, 100)),
                }
            )
        body: dict[str, Any] = {
            "platform": PLATFORM,
            "order_no": uuid.uuid4().hex,
            "buyer_user_id": random.choice(self.buyers),
            "currency": "CNY",
            "items": items,
            "shipping_amount": random.choice((0, 800)),
        }
        response = self.client.post("/api/v1/orders", json=body, name="/api/v1/orders")
        if not response.ok:
            return
        order_id = str(response.json()["id"])
        self.orders.append(order_id)
        paid = self.client.post(
            f"/api/v1/orders/{order_id}/pay", name="/api/v1/orders/{order_id}/pay"
        )
        if paid.ok:
            self.paid.append(order_id)

    @task(1)
    def platform_confirms_receipt(self) -> None:
        if self.paid:
            order_id = self.paid.popleft()
            self.client.post(
                f"/api/v1/orders/{order_id}/complete", name="/api/v1/orders/{order_id}/complete"
            )

    @task(2)
    def app_reads_an_order_and_its_commissions(self) -> None:
        if not self.orders:
            return
        order_id = random.choice(self.orders)
        self.client.get(f"/api/v1/orders/{order_id}", name="/api/v1/orders/{order_id}")
        self.client.get(
            f"/api/v1/orders/{order_id}/commissions",
            name="/api/v1/orders/{order_id}/commissions",
        )

    @task(2)
    def promoter_reads_balance(self) -> None:
        if self.promoter_id:
            self.client.get(
                f"/api/v1/accounts/{self.promoter_id}", name="/api/v1/accounts/{promoter_id}"
            )

    @task(2)
    def promoter_reads_stats(self) -> None:
        if not self.promoter_id:
            return
        today = date.today()
        self.client.get(
            f"/api/v1/stats/promoters/{self.promoter_id}",
            params={"from": (today - timedelta(days=7)).isoformat(), "to": today.isoformat()},
            name="/api/v1/stats/promoters/{promoter_id}",
        )

    @task(1)
    def promoter_reads_leaderboard(self) -> None:
        self.client.get(
            "/api/v1/stats/leaderboard",
            params={"metric": random.choice(("commission", "new_customers")), "period": "day"},
            name="/api/v1/stats/leaderboard",
        )


def percentile_ms(entry: Any, fraction: float) -> int:
    return int(entry.get_response_time_percentile(fraction) or 0)


def summary_lines(environment: Environment) -> list[str]:
    """One line per route: requests/s, failures and p50/p95/p99 in milliseconds."""
    stats = environment.stats
    header = (
        f"{'method':<6} {'route':<46} {'reqs':>7} {'fails':>6} {'req/s':>8} "
        f"{'p50ms':>6} {'p95ms':>6} {'p99ms':>6}"
    )
    lines = ["", "Tuike load summary", header, "-" * len(header)]
    entries = sorted(stats.entries.values(), key=lambda e: (e.name, e.method))
    for entry in [*entries, stats.total]:
        lines.append(
            f"{(entry.method or ''):<6} {entry.name:<46} {entry.num_requests:>7} "
            f"{entry.num_failures:>6} {entry.total_rps:>8.1f} {percentile_ms(entry, 0.5):>6} "
            f"{percentile_ms(entry, 0.95):>6} {percentile_ms(entry, 0.99):>6}"
        )
    return lines


@events.test_stop.add_listener
def print_summary(environment: Environment, **_: Any) -> None:
    print("\n".join(summary_lines(environment)), flush=True)
