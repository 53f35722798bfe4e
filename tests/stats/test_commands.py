"""The rebuild and reconciliation commands, as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import update

from deploy.local.stack import free_port
from libs.common.db.engine import Database, Tx
from services.stats import leaderboard, reads
from services.stats.models import promoter_stats
from services.stats.reconcile import compare_rows, compare_with_services, repair
from services.stats.service import StatsStores
from tests.stats.test_scenario import DAY1, DAY2, Tree, _apply


def _command(module: str, args: list[str], database_url: str, redis_url: str, prefix: str):  # type: ignore[no-untyped-def]
    env = {
        **os.environ,
        "TUIKE_DATABASE_URL": database_url,
        "TUIKE_REDIS_URL": redis_url,
        "TUIKE_REDIS_KEY_PREFIX": prefix,
        "TUIKE_ORDER_SERVICE_URL": f"http://127.0.0.1:{free_port()}",
        "TUIKE_COMMISSION_SERVICE_URL": f"http://127.0.0.1:{free_port()}",
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_reconciliation_finds_a_drifted_row_and_repairs_it(
    stats_db: Database, stores: StatsStores
) -> None:
    tree = Tree()
    await _apply(stats_db, stores, tree)
    assert await compare_rows(stats_db, DAY1, DAY2) == []

    async def drift(tx: Tx) -> None:
        table = promoter_stats.for_id(tree.p)
        await (await tx.shard(tree.p % 16)).execute(
            update(table)
            .where(table.c.promoter_id == tree.p, table.c.day == DAY1)
            .values(order_amount=table.c.order_amount + 1, commission_amount=0)
        )

    await stats_db.run(drift)
    found = await compare_rows(stats_db, DAY1, DAY2)
    assert {(d.promoter_id, d.day, d.figure, d.recorded, d.recomputed) for d in found} == {
        (tree.p, DAY1, "order_amount", 20001, 20000),
        (tree.p, DAY1, "commission_amount", 0, 2450),
    }
    assert await repair(stats_db, stores, found, DAY1, DAY2) == 1
    assert await compare_rows(stats_db, DAY1, DAY2) == []
    (day1,) = await reads.daily_rows(stats_db, tree.p, DAY1, DAY1)
    assert (day1["order_amount"], day1["commission_amount"], day1["new_customers"]) == (
        20000,
        2450,
        2,
    )


async def test_reconciliation_says_when_the_services_cannot_be_asked(
    stats_db: Database, stores: StatsStores
) -> None:
    tree = Tree()
    await _apply(stats_db, stores, tree)
    closed = f"http://127.0.0.1:{free_port()}"
    found = await compare_with_services(stats_db, DAY1, DAY2, closed, closed, {})
    assert {(d.order_id, d.what) for d in found} == {
        (tree.o1, "order service unreachable"),
        (tree.o2, "order service unreachable"),
    }


async def test_the_commands_rebuild_boards_and_reconcile(
    stats_db: Database, stores: StatsStores, database_url: str, redis_url: str, key_prefix: str
) -> None:
    tree = Tree()
    await _apply(stats_db, stores, tree)
    key = leaderboard.board_key(stores, "commission", "week", DAY1)
    await stores.redis.delete(key)
    done = _command(
        "services.stats.rebuild",
        ["--day", DAY1.isoformat()],
        database_url,
        redis_url,
        key_prefix,
    )
    assert done.returncode == 0, done.stderr
    assert "rebuilt commission week 2026-W10: 2 promoters" in done.stdout
    top = await leaderboard.top(stores, "commission", "week", DAY1, 10)
    assert [(r.promoter_id, r.value) for r in top] == [(tree.p, 2330), (tree.a, 1100)]

    # Rows agree with their facts; the order and commission services are not running here,
    # which the service check reports per order (exit status 1).
    checked = _command(
        "services.stats.reconcile",
        ["--from", DAY1.isoformat(), "--to", DAY2.isoformat()],
        database_url,
        redis_url,
        key_prefix,
    )
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "0 row differences, 2 order differences" in checked.stdout
    assert f"order={tree.o1} order service unreachable" in checked.stdout
