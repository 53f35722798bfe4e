"""Late and out-of-order events, moves in the tree, the cache race, refusals."""

from __future__ import annotations

import asyncio
from datetime import date, datetime

import pytest

from deploy.local.stack import free_port
from libs.common.db.engine import Database
from libs.common.errors import BadRequest
from libs.common.messaging.consumer import PoisonMessage
from libs.common.messaging.envelope import make_event
from services.stats import reads
from services.stats.consumers import consume
from services.stats.ingest import summary_cache_key
from services.stats.service import StatsStores
from services.stats.team import drain_team_queue
from tests.stats.conftest import SHANGHAI, at, bound, commissions, new_id, paid, refunded

D1, D2 = "2026-05-10", "2026-05-11"
DAY1, DAY2 = date(2026, 5, 10), date(2026, 5, 11)


def _amounts(rows: list[dict]) -> list[tuple[str, int, int]]:  # type: ignore[type-arg]
    return [(r["day"], r["order_count"], r["order_amount"]) for r in rows]


async def test_a_refund_that_overtakes_its_payment_lands_on_its_own_day(
    stats_db: Database, stores: StatsStores
) -> None:
    promoter, buyer, order = new_id(), new_id(), new_id()
    # Attribution was pending, so order.paid comes after the refund.
    await consume(stats_db, stores, [refunded(order, new_id(), [1500], at(D2, "08:00"))])
    assert _amounts(await reads.daily_rows(stats_db, promoter, DAY1, DAY2)) == [
        ("2026-05-10", 0, 0),
        ("2026-05-11", 0, 0),
    ]
    await consume(stats_db, stores, [paid(order, buyer, [promoter], [6000], at(D1, "21:00"))])
    assert _amounts(await reads.daily_rows(stats_db, promoter, DAY1, DAY2)) == [
        ("2026-05-10", 1, 6000),
        ("2026-05-11", 0, -1500),
    ]
    # A second refund after the payment applies directly.
    await consume(stats_db, stores, [refunded(order, new_id(), [500], at(D2, "09:00"))])
    assert _amounts(await reads.daily_rows(stats_db, promoter, DAY2, DAY2)) == [
        ("2026-05-11", 0, -2000)
    ]
    await drain_team_queue(stats_db)
    team = await reads.team_rows(stats_db, promoter, DAY1, DAY2)
    assert team["totals"]["level1"]["order_amount"] == 4000


async def test_an_order_without_a_promoter_counts_for_nobody(
    stats_db: Database, stores: StatsStores
) -> None:
    buyer, order = new_id(), new_id()
    assert await consume(stats_db, stores, [paid(order, buyer, [], [9900], at(D1, "10:00"))]) == 1
    assert await consume(stats_db, stores, [refunded(order, new_id(), [900], at(D1, "11:00"))]) == 1
    assert _amounts(await reads.daily_rows(stats_db, buyer, DAY1, DAY1)) == [("2026-05-10", 0, 0)]


async def test_a_rebind_moves_the_subtree_for_team_figures(
    stats_db: Database, stores: StatsStores
) -> None:
    old_parent, new_parent, x, y = new_id(), new_id(), new_id(), new_id()
    await consume(
        stats_db,
        stores,
        [bound(x, [old_parent], at(D1, "09:00")), bound(y, [x, old_parent], at(D1, "09:30"))],
    )
    await consume(stats_db, stores, [bound(x, [new_parent], at(D2, "09:00"), kind="user.rebound")])
    # Y earns a commission after the move: it counts for X's new upline, not the old one.
    await consume(
        stats_db, stores, [commissions("accrued", new_id(), [(1, y, 700)], at(D2, "10:00"))]
    )
    await drain_team_queue(stats_db)
    new_team = await reads.team_rows(stats_db, new_parent, DAY2, DAY2)
    assert new_team["totals"]["level2"]["commission_amount"] == 700
    old_team = await reads.team_rows(stats_db, old_parent, DAY1, DAY2)
    assert old_team["totals"]["team"]["commission_amount"] == 0
    # The rebind is a new customer for the new parent; the old parent keeps its day-1 bind.
    assert (await reads.daily_rows(stats_db, new_parent, DAY2, DAY2))[0]["new_customers"] == 1
    assert (await reads.daily_rows(stats_db, old_parent, DAY1, DAY1))[0]["new_customers"] == 1


async def test_no_stale_summary_survives_a_write_that_raced_a_cache_fill(
    stats_db: Database, stores: StatsStores
) -> None:
    """The seed's race: a reader loads the old row, a write commits and invalidates, then
    the reader stores what it loaded. Here the reader's fill is refused, so the next read
    shows the write."""
    promoter = new_id()
    now = datetime.now(SHANGHAI)
    today = stores.today()
    await consume(stats_db, stores, [bound(new_id(), [promoter], now)])
    loaded, release = asyncio.Event(), asyncio.Event()

    async def slow_loader() -> dict:  # type: ignore[type-arg]
        value = await reads.load_summary(stats_db, promoter, today)
        loaded.set()
        await release.wait()  # the write commits while this reader holds the old value
        return value

    reader = asyncio.create_task(
        stores.cache.get_or_load(summary_cache_key(promoter, today), slow_loader)
    )
    await loaded.wait()
    await consume(stats_db, stores, [bound(new_id(), [promoter], now)])
    release.set()
    assert (await reader)["today"]["new_customers"] == 1  # what that reader saw
    assert (await reads.cached_summary(stats_db, stores, promoter))["today"]["new_customers"] == 2
    # ... and the value now cached is the new one.
    assert (await reads.cached_summary(stats_db, stores, promoter))["today"]["new_customers"] == 2
    await consume(stats_db, stores, [bound(new_id(), [promoter], now)])
    assert (await reads.cached_summary(stats_db, stores, promoter))["today"]["new_customers"] == 3


async def test_the_summary_shows_null_balances_when_the_commission_service_is_down(
    stats_db: Database, stores: StatsStores
) -> None:
    promoter = new_id()
    await consume(
        stats_db,
        stores,
        [commissions("accrued", new_id(), [(1, promoter, 321)], datetime.now(SHANGHAI))],
    )
    summary = await reads.summary_with_balances(
        stats_db, stores, promoter, f"http://127.0.0.1:{free_port()}", {}
    )
    assert summary["today"]["commission_amount"] == 321
    assert summary["frozen_amount"] is None
    assert summary["available_amount"] is None


async def test_bad_data_is_a_poison_message_and_nothing_is_written(
    stats_db: Database, stores: StatsStores
) -> None:
    promoter = new_id()
    good = commissions("accrued", new_id(), [(1, promoter, 100)], at(D1, "10:00"))
    broken = make_event(
        "commission.accrued", "broken", key="1", data={"order_id": "x"}, source="commission"
    )
    with pytest.raises(PoisonMessage):
        await consume(stats_db, stores, [good, broken])
    assert (await reads.daily_rows(stats_db, promoter, DAY1, DAY1))[0]["commission_amount"] == 0
    assert await consume(stats_db, stores, [good]) == 1


@pytest.mark.parametrize(
    ("first", "last", "code"),
    [
        (DAY2, DAY1, "stats.bad_range"),
        (date(2025, 1, 1), date(2026, 1, 2), "stats.range_too_long"),
    ],
)
def test_a_bad_day_range_is_refused(
    stores: StatsStores, first: date, last: date, code: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        reads.day_range(stores, first, last)
    assert refused.value.code == code


async def test_a_bad_leaderboard_query_is_refused(stores: StatsStores) -> None:
    for metric, period, limit, code in [
        ("likes", "day", 10, "stats.bad_metric"),
        ("commission", "year", 10, "stats.bad_period"),
        ("commission", "day", 0, "stats.bad_limit"),
        ("commission", "day", 501, "stats.bad_limit"),
    ]:
        with pytest.raises(BadRequest) as refused:
            await reads.leaderboard_view(stores, metric, period, None, limit, None)
        assert refused.value.code == code


async def test_one_micro_batch_with_moves_payments_and_refunds_together(
    stats_db: Database, stores: StatsStores
) -> None:
    """The consumer applies a whole micro-batch at once: a subtree built and moved inside
    it, and a refund next to its payment, come out as if applied one by one."""
    old_parent, new_parent, x, y, order = (new_id() for _ in range(5))
    await consume(
        stats_db,
        stores,
        [
            bound(x, [old_parent], at(D1, "09:00")),
            bound(y, [x, old_parent], at(D1, "09:30")),
            bound(x, [new_parent], at(D1, "10:00"), kind="user.rebound"),
            refunded(order, new_id(), [250], at(D2, "10:00")),
            paid(order, y, [x, new_parent], [1000], at(D1, "11:00")),
            commissions("accrued", order, [(1, x, 100), (2, new_parent, 30)], at(D1, "11:00")),
        ],
    )
    await drain_team_queue(stats_db)
    assert _amounts(await reads.daily_rows(stats_db, x, DAY1, DAY2)) == [
        ("2026-05-10", 1, 1000),
        ("2026-05-11", 0, -250),
    ]
    team = await reads.team_rows(stats_db, new_parent, DAY1, DAY2)
    assert team["totals"]["level1"]["commission_amount"] == 100
    assert team["totals"]["level2"]["order_amount"] == 750
    # Each bind counts for the chain it was made under: X's rebind for the new parent; X's
    # first bind and Y's bind (under X, then under the old parent) for the old one.
    assert team["totals"]["team"]["new_customers"] == 1
    old_team = await reads.team_rows(stats_db, old_parent, DAY1, DAY2)
    assert old_team["totals"]["level1"]["new_customers"] == 1
    assert old_team["totals"]["level2"]["new_customers"] == 1
    assert (await reads.daily_rows(stats_db, old_parent, DAY1, DAY1))[0]["new_customers"] == 1
