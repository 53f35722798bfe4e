"""The stream of business the harness drives through the gateway while faults hit: promoters
(two levels), buyers bound under them, orders paid, partial refunds, completions, settlement
runs and withdrawals paid out through the fake WeChat Pay.

The driver remembers what it asked for (the numbers it chose, the binds it made, the refunds
that were accepted) so reconciliation can recompute what the system should hold from the
driver's side, not only from the system's own records.
"""

from __future__ import annotations

import asyncio
import logging
import random
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from chaos.client import Api

log = logging.getLogger("tuike.chaos.traffic")

PLATFORM = "chaos"
ID_NUMBER = "11010519491231002X"
# Rule levels: level -> (rate_bps, cap_amount or None).
Levels = dict[int, tuple[int, int | None]]
DEFAULT_LEVELS: Levels = {1: (1_000, None), 2: (500, None)}
CAPPED_SKU = "chaos-capped"
CAPPED_LEVELS: Levels = {1: (2_000, 500), 2: (500, 100)}
# sku -> (category, the levels of the rule that decides it).
SKUS: dict[str, tuple[str, Levels]] = {
    "chaos-book": ("books", DEFAULT_LEVELS),
    "chaos-toy": ("toys", DEFAULT_LEVELS),
    CAPPED_SKU: ("gadgets", CAPPED_LEVELS),
}


def _levels_body(levels: Levels) -> list[dict[str, Any]]:
    return [
        {"level": level, "rate_bps": rate, **({"cap_amount": cap} if cap is not None else {})}
        for level, (rate, cap) in sorted(levels.items())
    ]


@dataclass
class Promoter:
    id: str
    code: str
    parent: str | None
    openid: str


@dataclass
class Order:
    order_no: str
    buyer: str
    chain: list[str]  # the beneficiaries the driver expects, level 1 first
    items: list[dict[str, Any]]
    id: str | None = None
    paid: bool = False
    completed: bool = False
    refunded: int = 0  # accepted refund amounts, as the driver counted them
    refunds: int = 0
    # A refund call ran out of retries: whether it was applied is unknown to the driver.
    uncertain: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def paid_amount(self) -> int:
        return sum(int(item["paid_amount"]) for item in self.items)


@dataclass
class Withdrawal:
    key: str
    promoter: str
    amount: int
    id: str | None = None


class Traffic:
    """Runs ``workers`` concurrent loops of weighted random operations."""

    def __init__(self, api: Api, rng: random.Random, *, fake_wechat: Any = None) -> None:
        self.api = api
        self.rng = rng
        self.fake_wechat = fake_wechat
        self.promoters: list[Promoter] = []
        self.orders: list[Order] = []
        self.withdrawals: list[Withdrawal] = []
        self.ops: Counter[str] = Counter()
        self._seq = 0
        self._promoter_locks: dict[str, asyncio.Lock] = {}

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    # -- setup -----------------------------------------------------------------------------
    async def setup(self, roots: int = 3, children: int = 3) -> None:
        """Settings, rules and a two-level promoter tree with payee details on file."""
        await self._must(
            "PUT",
            "/api/v1/settings/commission",
            {"frozen_days": 0, "withdraw_fee_bps": 100},
        )
        await self._must(
            "POST",
            "/api/v1/commission/rules",
            {"scope": "default", "levels": _levels_body(DEFAULT_LEVELS)},
        )
        await self._must(
            "POST",
            "/api/v1/commission/rules",
            {"scope": "product", "key": CAPPED_SKU, "levels": _levels_body(CAPPED_LEVELS)},
        )
        for index in range(roots + children):
            parent = self.promoters[index % roots] if index >= roots else None
            self.promoters.append(await self._new_promoter(index, parent))
        for promoter in self.promoters:
            self._promoter_locks[promoter.id] = asyncio.Lock()

    async def _new_promoter(self, index: int, parent: Promoter | None) -> Promoter:
        user = await self._must("POST", "/api/v1/users", {"external_id": f"chaos-p-{index}"})
        user_id = str(user["id"])
        if parent is not None:
            await self._bind(user_id, parent.code)
        await self._must("POST", "/api/v1/promoters", {"user_id": user_id})
        await self._must("POST", f"/api/v1/promoters/{user_id}/approve")
        code = str((await self._must("GET", f"/api/v1/promoters/{user_id}"))["code"])
        openid = "oChaos" + "".join(self.rng.choices(string.ascii_letters + string.digits, k=22))
        await self._must(
            "PUT",
            f"/api/v1/promoters/{user_id}/payee",
            {"real_name": "张三", "id_number": ID_NUMBER, "wechat_openid": openid},
        )
        return Promoter(user_id, code, parent.id if parent else None, openid)

    async def _must(self, method: str, path: str, body: Any = None) -> Any:
        response = await self.api.call(method, path, body, budget=180)
        if response is None or response.status_code >= 300:
            detail = None if response is None else response.text[:300]
            raise RuntimeError(f"setup call {method} {path} failed: {detail}")
        return response.json()

    async def _bind(self, user_id: str, code: str) -> None:
        response = await self.api.call(
            "POST",
            "/api/v1/relations/bind",
            {"user_id": user_id, "promoter_code": code, "source": "code"},
            retry_codes=("relation.changed",),
        )
        if response is None:
            return
        # A retry of a bind that went through finds the user bound already: that is fine
        # (reconciliation compares the snapshot with the parent the driver asked for).
        if response.status_code >= 300 and _code(response) != "relation.already_bound":
            raise RuntimeError(f"bind failed: {response.text[:300]}")

    # -- the stream ------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, workers: int = 3) -> None:
        await asyncio.gather(*(self._loop(stop) for _ in range(workers)))

    async def _loop(self, stop: asyncio.Event) -> None:
        operations = [
            (self.new_order, 40),
            (self.refund, 15),
            (self.complete, 15),
            (self.settle, 8),
            (self.withdraw, 12),
            (self.new_unpaid_order, 4),
        ]
        functions = [op for op, _ in operations]
        weights = [w for _, w in operations]
        while not stop.is_set():
            operation = self.rng.choices(functions, weights)[0]
            try:
                await operation()
            except Exception:
                # The driver must survive anything the system answers; the reconciliation
                # decides whether the system is right.
                log.exception("traffic operation %s failed", operation.__name__)
                self.ops["crashed"] += 1

    async def write_for(self, service: str) -> None:
        """One write that lands in ``service`` (used to kill a process in the middle of it)."""
        if service == "order":
            await self.new_order()
        elif service == "commission":
            await (self.withdraw() if self.rng.random() < 0.5 else self.settle())
        elif service == "user":
            await self._new_buyer(self.rng.choice(self.promoters))
        else:
            await self.new_order()

    async def _new_buyer(self, promoter: Promoter) -> str:
        n = self._next()
        user = await self.api.call("POST", "/api/v1/users", {"external_id": f"chaos-b-{n}"})
        if user is None or user.status_code >= 300:
            raise RuntimeError("could not create a buyer")
        buyer = str(user.json()["id"])
        await self._bind(buyer, promoter.code)
        self.ops["buyers"] += 1
        return buyer

    def _items(self) -> list[dict[str, Any]]:
        items = []
        for sku in self.rng.sample(sorted(SKUS), self.rng.randint(1, 3)):
            quantity = self.rng.randint(1, 3)
            unit = self.rng.randint(1_000, 20_000)
            paid = unit * quantity - self.rng.randint(0, unit * quantity // 10)
            category = SKUS[sku][0]
            items.append(
                {
                    "sku": sku,
                    "category": category,
                    "quantity": quantity,
                    "unit_price_amount": unit,
                    "paid_amount": paid,
                }
            )
        return items

    async def _create_order(self, pay: bool) -> Order | None:
        promoter = self.rng.choice(self.promoters)
        buyer = await self._new_buyer(promoter)
        chain = [promoter.id] + ([promoter.parent] if promoter.parent else [])
        order = Order(f"chaos-{self._next()}", buyer, chain, self._items())
        self.orders.append(order)
        response = await self.api.call(
            "POST",
            "/api/v1/orders",
            {
                "platform": PLATFORM,
                "order_no": order.order_no,
                "buyer_user_id": buyer,
                "currency": "CNY",
                "items": order.items,
                "shipping_amount": self.rng.choice([0, 500, 1_000]),
            },
        )
        if response is None or response.status_code >= 300:
            return None
        order.id = str(response.json()["id"])
        self.ops["orders_created"] += 1
        if pay:
            async with order.lock:
                paid = await self.api.call("POST", f"/api/v1/orders/{order.id}/pay")
                if paid is not None and paid.status_code < 300:
                    order.paid = True
                    self.ops["orders_paid"] += 1
        return order

    async def new_order(self) -> None:
        await self._create_order(pay=True)

    async def new_unpaid_order(self) -> None:
        await self._create_order(pay=False)

    def _pick(self, condition: Any) -> Order | None:
        candidates = [o for o in self.orders if condition(o) and not o.lock.locked()]
        return self.rng.choice(candidates) if candidates else None

    async def refund(self) -> None:
        order = self._pick(
            lambda o: o.paid and o.refunds < 3 and o.paid_amount - o.refunded > 10 and o.id
        )
        if order is None:
            return
        async with order.lock:
            remaining = order.paid_amount - order.refunded
            order.refunds += 1
            refund_no = f"{order.order_no}-r{order.refunds}"
            if self.rng.random() < 0.5:
                amount = self.rng.randint(1, max(1, remaining // 3))
                body: dict[str, Any] = {"refund_no": refund_no, "amount": amount}
            else:
                # Per item: the driver does not know the item's refunds when an order-level
                # refund was spread before, so stay well inside a third of what is left.
                item = self.rng.choice(order.items)
                amount = self.rng.randint(1, max(1, int(item["paid_amount"]) // 3 // 3))
                body = {"refund_no": refund_no, "items": [{"sku": item["sku"], "amount": amount}]}
            response = await self.api.call("POST", f"/api/v1/orders/{order.id}/refunds", body)
            if response is None:
                order.uncertain = True
            elif response.status_code < 300:
                order.refunded += amount
                self.ops["refunds"] += 1

    async def complete(self) -> None:
        order = self._pick(lambda o: o.paid and not o.completed)
        if order is None:
            return
        async with order.lock:
            response = await self.api.call("POST", f"/api/v1/orders/{order.id}/complete")
            if response is not None and response.status_code < 300:
                order.completed = True
                self.ops["completions"] += 1

    async def settle(self) -> None:
        response = await self.api.call("POST", "/api/v1/settlements/run")
        if response is not None and response.status_code < 300:
            self.ops["settlement_runs"] += 1

    async def withdraw(self) -> None:
        promoter = self.rng.choice(self.promoters)
        lock = self._promoter_locks[promoter.id]
        if lock.locked():
            return
        async with lock:
            account = await self.api.call("GET", f"/api/v1/accounts/{promoter.id}")
            if account is None or account.status_code != 200:
                return
            available = int(account.json()["available_amount"])
            if available < 300:
                return
            withdrawal = Withdrawal(
                f"chaos-w-{self._next()}", promoter.id, self.rng.randint(100, available // 2)
            )
            self.withdrawals.append(withdrawal)
            response = await self.api.call(
                "POST",
                "/api/v1/withdrawals",
                {
                    "promoter_id": promoter.id,
                    "amount": withdrawal.amount,
                    "channel": "wechat",
                    "idempotency_key": withdrawal.key,
                },
            )
            if response is None or response.status_code >= 300:
                return
            withdrawal.id = str(response.json()["id"])
            self.ops["withdrawals"] += 1
            await self._audit(withdrawal)

    async def _audit(self, withdrawal: Withdrawal) -> None:
        roll = self.rng.random()
        if roll < 0.1:
            await self.api.call("POST", f"/api/v1/withdrawals/{withdrawal.id}/cancel")
            self.ops["withdrawals_cancelled"] += 1
            return
        if roll < 0.2:
            await self.api.call(
                "POST",
                f"/api/v1/withdrawals/{withdrawal.id}/reject",
                {"reason": "chaos: rejected at random"},
            )
            self.ops["withdrawals_rejected"] += 1
            return
        if self.fake_wechat is not None and roll > 0.85:
            # The provider misbehaves on this transfer: it loses its answer after paying,
            # refuses it, or is down. The payout id must keep a retry from paying twice.
            self.fake_wechat.next_transfer.append(self.rng.choice(["lose_answer", "fail", "down"]))
        response = await self.api.call("POST", f"/api/v1/withdrawals/{withdrawal.id}/approve")
        if response is not None and response.status_code < 300:
            self.ops["withdrawals_approved"] += 1

    async def finish_payouts(self) -> int:
        """Ask again for every payout whose outcome is unknown or that failed (new payout
        id), as finance would; returns how many were asked."""
        asked = 0
        for withdrawal in self.withdrawals:
            if withdrawal.id is None:
                continue
            response = await self.api.call("GET", f"/api/v1/withdrawals/{withdrawal.id}")
            if response is None or response.status_code != 200:
                continue
            if response.json()["status"] in ("approved", "failed"):
                await self.api.call("POST", f"/api/v1/withdrawals/{withdrawal.id}/payout")
                asked += 1
        return asked


def _code(response: Any) -> str:
    try:
        return str(response.json()["error"]["code"])
    except Exception:
        return ""
