"""``python -m chaos [--seconds N] [--seed S]``: run the stack under faults, reconcile, and
print the fault counts and, as the last line, ``reconciliation: N differences`` (exit status
0 only when N is 0).

Environment: ``TUIKE_CHAOS_SECONDS`` (default 120); ``TUIKE_CHAOS_MYSQL_URL`` or
``TUIKE_TEST_MYSQL_URL`` (a MariaDB/MySQL server: fresh databases, dropped afterwards; unset =
SQLite); ``TUIKE_CHAOS_REDIS_URL`` or ``TUIKE_TEST_REDIS_URL`` (unset = an embedded Redis);
``TUIKE_CHAOS_SEED``; ``TUIKE_CHAOS_KEEP=1`` keeps var/chaos-*/ (logs) afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from chaos.harness import ChaosConfig, Harness, report


def _say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m chaos")
    parser.add_argument(
        "--seconds", type=float, default=float(env.get("TUIKE_CHAOS_SECONDS", "120"))
    )
    seed = env.get("TUIKE_CHAOS_SEED")
    parser.add_argument("--seed", type=int, default=int(seed) if seed else None)
    parser.add_argument(
        "--mysql-url", default=env.get("TUIKE_CHAOS_MYSQL_URL") or env.get("TUIKE_TEST_MYSQL_URL")
    )
    parser.add_argument(
        "--redis-url", default=env.get("TUIKE_CHAOS_REDIS_URL") or env.get("TUIKE_TEST_REDIS_URL")
    )
    parser.add_argument("--var-dir", type=Path, default=None)
    parser.add_argument("--quiet-timeout", type=float, default=120.0)
    parser.add_argument(
        "--faults",
        default=env.get("TUIKE_CHAOS_FAULTS", ""),
        help="comma-separated fault kinds to inject (default: every kind)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    # The chaos consumer reconnects through broker restarts: its client's complaints are noise.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    config = ChaosConfig(
        seconds=args.seconds,
        seed=args.seed,
        mysql_url=args.mysql_url or None,
        redis_url=args.redis_url or None,
        var_dir=args.var_dir,
        quiet_timeout=args.quiet_timeout,
        kinds=tuple(k for k in args.faults.split(",") if k) or None,
    )
    result = asyncio.run(Harness(config, _say).run())
    report(result, _say)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
