"""``make bench`` / ``python -m bench [NAME ...]``: run the benchmarks in bench/ and print
their figures. Each ``bench/bench_<name>.py`` has a ``main() -> None`` that prints its own
figures beside the baseline it measured in the same run; none passes or fails on time."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import bench


def main(argv: list[str]) -> int:
    names = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(bench.__path__)
        if m.name.startswith("bench_")
    )
    wanted = argv or names
    unknown = [n for n in wanted if n not in names]
    if unknown:
        print(f"unknown benchmarks {unknown}; have {names}", file=sys.stderr)
        return 2
    for name in wanted:
        print(f"\n=== bench {name} ===", flush=True)
        started = time.perf_counter()
        importlib.import_module(f"bench.bench_{name}").main()
        print(f"=== {name} took {time.perf_counter() - started:.1f}s ===", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
