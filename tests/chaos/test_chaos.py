"""The bounded chaos run of ``make test``: the whole stack in separate processes under
traffic for ~35 s of faults (process kills, kills in the middle of writes on SQLite, broker
restarts, database and Redis cuts through the proxy on MariaDB, every event delivered twice),
then a reconciliation that must find nothing. ``make chaos`` runs the same harness longer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chaos.harness import ChaosConfig, ChaosResult, Harness, report
from tests.conftest import Backend

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


def _summary(result: ChaosResult) -> str:
    lines: list[str] = []
    report(result, lines.append)
    return "\n".join(lines)


async def test_nothing_lost_nothing_paid_twice_under_faults(
    backend: Backend, tmp_path: Path
) -> None:
    seed = int(os.environ.get("TUIKE_CHAOS_SEED", "0")) or None
    config = ChaosConfig(
        seconds=float(os.environ.get("TUIKE_CHAOS_TEST_SECONDS", "35")),
        seed=seed,
        mysql_url=backend.mysql_url,
        redis_url=backend.redis_url,
        var_dir=tmp_path / "chaos",
        fault_interval=(1.0, 3.0),
        cut_seconds=(1.5, 3.0),
        quiet_timeout=90.0,
    )
    harness = Harness(config, say=print)
    result = await harness.run()
    summary = _summary(result)
    print(summary)

    assert result.differences == [], summary
    expected_kinds = {"kill_process", "restart_broker", "cut_redis"}
    expected_kinds |= {"cut_database"} if backend.mysql_url else {"kill_mid_write"}
    assert {kind for kind, count in result.faults.items() if count > 0} == expected_kinds, summary
    assert result.redelivered > 0, summary  # every event went out a second time
    assert result.operations["orders_paid"] > 0 and result.operations["refunds"] > 0, summary
    assert result.checked["orders_paid"] >= result.operations["orders_paid"], summary
    assert result.summary_line() == f"reconciliation: {len(result.differences)} differences"
