"""A scripted series of binds, orders, refunds and commission changes: the figures the
stats service shows equal those worked out by hand below."""

from __future__ import annotations

from datetime import date

import pytest

from libs.common.db.engine import Database
from services.stats import leaderboard, reads
from services.stats.consumers import consume
from services.stats.service import StatsStores
from services.stats.team import drain_team_queue
from tests.stats.conftest import at, bound, commissions, new_id, paid, refunded

D1, D2 = "2026-03-02", "2026-03-03"  # a Monday and the Tuesday after it
DAY1, DAY2 = date(2026, 3, 2), date(2026, 3, 3)

ZERO = {
    "order_count": 0,
    "order_amount": 0,
    "commission_amount": 0,
    "settled_commission_amount": 0,
    "new_customers": 0,
}


def figures(**values: int) -> dict[str, int]:
    return {**ZERO, **values}


class Tree:
    """P (root promoter) ← A (promoter) ← B (buyer); P ← C, P ← C2 (buyers)."""

    def __init__(self, bind_version: int = 2) -> None:
        self.p, self.a, self.b, self.c, self.c2 = (new_id() for _ in range(5))
        self.o1, self.o2, self.r1 = new_id(), new_id(), new_id()
        self.bind_version = bind_version

    def events(self) -> list:  # type: ignore[type-arg]
        p, a, b, c, c2, o1, o2 = self.p, self.a, self.b, self.c, self.c2, self.o1, self.o2
        version = self.bind_version
        return [
            bound(a, [p], at(D1, "10:00"), version=version),
            bound(b, [a, p], at(D1, "11:00"), version=version),
            # 23:30 in Shanghai is still day 1; 00:10 is day 2 (16:10 UTC of day 1).
            bound(c, [p], at(D1, "23:30"), version=version),
            bound(c2, [p], at(D2, "00:10"), version=version),
            # B pays 100.00 + 50.00 (+ 8.00 shipping, not counted) under A, then P.
            paid(o1, b, [a, p], [10000, 5000], at(D1, "12:00"), shipping_amount=800),
            commissions(
                "accrued",
                o1,
                [(1, a, 1000), (1, a, 500), (2, p, 300), (2, p, 150)],
                at(D1, "12:00"),
            ),
            paid(o2, c, [p], [20000], at(D1, "20:00")),
            commissions("accrued", o2, [(1, p, 2000)], at(D1, "20:00")),
            # Day 2: 40.00 of O1's first item is refunded; its lines are recomputed.
            refunded(o1, self.r1, [4000], at(D2, "09:00")),
            commissions("reversed", o1, [(1, a, 400), (2, p, 120)], at(D2, "09:00")),
            commissions("settled", o2, [(1, p, 2000)], at(D2, "10:00")),
        ]


async def _apply(stats_db: Database, stores: StatsStores, tree: Tree) -> None:
    events = tree.events()
    # Two micro-batches, as the consumer would see them.
    assert await consume(stats_db, stores, events[:5]) == 5
    assert await consume(stats_db, stores, events[5:]) == len(events) - 5
    await drain_team_queue(stats_db)


async def test_daily_figures_equal_the_hand_computed_ones(
    stats_db: Database, stores: StatsStores
) -> None:
    tree = Tree()
    await _apply(stats_db, stores, tree)

    a_days = await reads.daily_rows(stats_db, tree.a, DAY1, date(2026, 3, 4))
    assert a_days == [
        {
            "day": "2026-03-02",
            **figures(order_count=1, order_amount=15000, commission_amount=1500, new_customers=1),
        },
        {"day": "2026-03-03", **figures(order_amount=-4000, commission_amount=-400)},
        {"day": "2026-03-04", **ZERO},  # a gap, filled with zeros
    ]
    p_days = await reads.daily_rows(stats_db, tree.p, DAY1, DAY2)
    assert p_days == [
        {
            "day": "2026-03-02",
            **figures(order_count=1, order_amount=20000, commission_amount=2450, new_customers=2),
        },
        {
            "day": "2026-03-03",
            **figures(commission_amount=-120, settled_commission_amount=2000, new_customers=1),
        },
    ]
    # Buyers who earn nothing have no figures.
    assert await reads.daily_rows(stats_db, tree.b, DAY1, DAY1) == [{"day": "2026-03-02", **ZERO}]


async def test_summary_adds_up_today_yesterday_month_and_all_time(
    stats_db: Database, stores: StatsStores
) -> None:
    tree = Tree()
    await _apply(stats_db, stores, tree)
    summary = await reads.load_summary(stats_db, tree.p, DAY2)
    assert summary["today"] == figures(
        commission_amount=-120, settled_commission_amount=2000, new_customers=1
    )
    assert summary["yesterday"] == figures(
        order_count=1, order_amount=20000, commission_amount=2450, new_customers=2
    )
    month = figures(
        order_count=1,
        order_amount=20000,
        commission_amount=2330,
        settled_commission_amount=2000,
        new_customers=3,
    )
    assert summary["this_month"] == month
    assert summary["all_time"] == month
    # Seen from the day before, day 2 is not counted yet.
    earlier = await reads.load_summary(stats_db, tree.a, DAY1)
    assert earlier["all_time"] == figures(
        order_count=1, order_amount=15000, commission_amount=1500, new_customers=1
    )


@pytest.mark.parametrize("bind_version", [2, 1])
async def test_team_figures_reach_every_ancestor(
    stats_db: Database, stores: StatsStores, bind_version: int
) -> None:
    """The same from bind events of either version: ancestors as a compact path (2, what the
    user service writes) or as a list of decimal ids (1, what it wrote before)."""
    tree = Tree(bind_version)
    await _apply(stats_db, stores, tree)
    team = await reads.team_rows(stats_db, tree.p, DAY1, DAY2)
    day1, day2 = team["items"]
    # Level 1 = A, C, C2: binds of A and C, C's order, A's commission.
    assert day1["level1"] == figures(
        order_count=1, order_amount=20000, commission_amount=1500, new_customers=2
    )
    assert day2["level1"] == figures(commission_amount=-400, new_customers=1)
    # Level 2 = B: B's bind and B's order, net of its refund on day 2.
    assert day1["level2"] == figures(order_count=1, order_amount=15000, new_customers=1)
    assert day2["level2"] == figures(order_amount=-4000)
    assert team["totals"]["team"] == figures(
        order_count=2, order_amount=31000, commission_amount=1100, new_customers=4
    )
    a_team = await reads.team_rows(stats_db, tree.a, DAY1, DAY2)
    assert a_team["totals"] == {
        "level1": figures(order_count=1, order_amount=11000, new_customers=1),
        "level2": ZERO,
        "team": figures(order_count=1, order_amount=11000, new_customers=1),
    }


async def test_leaderboards_rank_by_period_and_rebuild_the_same(
    stats_db: Database, stores: StatsStores
) -> None:
    tree = Tree()
    await _apply(stats_db, stores, tree)

    async def board(metric: str, period: str, day: date) -> list[tuple[int, int, int]]:
        return [
            (r.rank, r.promoter_id, r.value)
            for r in await leaderboard.top(stores, metric, period, day, 10)
        ]

    assert await board("commission", "day", DAY1) == [(1, tree.p, 2450), (2, tree.a, 1500)]
    assert await board("commission", "month", DAY1) == [(1, tree.p, 2330), (2, tree.a, 1100)]
    assert await board("order_amount", "week", DAY2) == [(1, tree.p, 20000), (2, tree.a, 11000)]
    assert await board("new_customers", "week", DAY1) == [(1, tree.p, 3), (2, tree.a, 1)]
    mine = await reads.leaderboard_view(stores, "commission", "month", DAY1, 1, tree.a)
    assert mine["items"] == [{"rank": 1, "promoter_id": tree.p, "value": 2330}]
    assert mine["me"] == {"rank": 2, "promoter_id": tree.a, "value": 1100}
    assert mine["period_key"] == "202603"
    assert (mine["from"], mine["to"]) == ("2026-03-01", "2026-03-31")
    stranger = await reads.leaderboard_view(stores, "commission", "day", DAY1, 5, new_id())
    assert stranger["me"]["rank"] is None

    before = {
        (metric, period): await board(metric, period, DAY1)
        for metric in leaderboard.METRICS
        for period in leaderboard.PERIODS
    }
    await stores.redis.delete(
        *[leaderboard.board_key(stores, metric, period, DAY1) for metric, period in before]
    )
    for metric, period in before:
        await leaderboard.rebuild(stats_db, stores, metric, period, DAY1)
    after = {key: await board(*key, DAY1) for key in before}
    assert after == before


async def test_a_duplicate_event_changes_nothing(stats_db: Database, stores: StatsStores) -> None:
    tree = Tree()
    await _apply(stats_db, stores, tree)
    before = await reads.daily_rows(stats_db, tree.p, DAY1, DAY2)
    team_before = await reads.team_rows(stats_db, tree.p, DAY1, DAY2)
    board_before = await leaderboard.top(stores, "commission", "month", DAY1, 10)
    assert await consume(stats_db, stores, tree.events()) == 0
    await drain_team_queue(stats_db)
    assert await reads.daily_rows(stats_db, tree.p, DAY1, DAY2) == before
    assert await reads.team_rows(stats_db, tree.p, DAY1, DAY2) == team_before
    assert await leaderboard.top(stores, "commission", "month", DAY1, 10) == board_before
    # The same order.paid under a new envelope id (a republish by hand) is still one order.
    again = paid(tree.o2, tree.c, [tree.p], [20000], at(D1, "20:00"))
    again = again.model_copy(update={"id": "order.paid:replayed"})
    await consume(stats_db, stores, [again])
    assert await reads.daily_rows(stats_db, tree.p, DAY1, DAY2) == before
