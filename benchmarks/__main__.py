"""``python -m benchmarks``: run the benchmark suite, print a table, write results.json.

Options: ``--only NAME`` (repeatable or comma-separated; see ``--list``), ``--rounds N``
(rounds of every A/B comparison, at least 5), ``--heavy-rounds N`` (rounds of the ~20 s
rate-limit runs, default 1), ``--quick`` (smaller sizes and windows: a smoke run whose numbers
are less precise), ``--output PATH`` (default ``benchmarks/results.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks import (
    bench_bulk,
    bench_decode,
    bench_import,
    bench_memory,
    bench_overhead,
    bench_ratelimit,
)
from benchmarks._harness import Row, Settings, table

Bench = Callable[[Settings], Awaitable[list[Row]]]

# In the order they run: the quick, CPU-bound ones first.
BENCHMARKS: dict[str, tuple[str, Bench]] = {
    "import": ("7 import time vs aiohttp", bench_import.run),
    "decode": ("2 bytes -> User vs JSON parsing alone", bench_decode.run),
    "overhead": ("1 add_phone req/s vs a raw aiohttp loop, c=1 and c=32", bench_overhead.run),
    "bulk": (
        "3 bulk under 20 ms latency (+ 5 faults and 4b outage when selected)",
        lambda s: bench_bulk.run(s, bulk=True, faults=False, outage=False),
    ),
    "faults": (
        "5 bulk with 5% 503s and 2% disconnects vs fault-free",
        lambda s: bench_bulk.run(s, bulk=False, faults=True, outage=False),
    ),
    "outage": (
        "4b 2,000 items against 503s everywhere",
        lambda s: bench_bulk.run(s, bulk=False, faults=False, outage=True),
    ),
    "ratelimit": (
        "4 rate-limit utilisation: headers, adaptive, limit halving",
        bench_ratelimit.run,
    ),
    "memory": ("6 peak RSS growth, 20k vs 100k items", bench_memory.run),
}
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results.json"


def selected(only: list[str] | None) -> list[str]:
    if not only:
        return list(BENCHMARKS)
    names = {name.strip() for group in only for name in group.split(",") if name.strip()}
    unknown = names - set(BENCHMARKS)
    if unknown:
        raise SystemExit(
            f"unknown benchmark(s): {', '.join(sorted(unknown))}; choose from {', '.join(BENCHMARKS)}"
        )
    return [name for name in BENCHMARKS if name in names]


def plan(names: list[str]) -> list[tuple[str, Bench]]:
    """The runs to make: bulk, faults and outage share one server and fault-free runs."""
    bulkish = [n for n in names if n in {"bulk", "faults", "outage"}]
    runs: list[tuple[str, Bench]] = []
    for name in names:
        if name in bulkish:
            if name != bulkish[0]:
                continue
            flags = {
                "bulk": "bulk" in bulkish,
                "faults": "faults" in bulkish,
                "outage": "outage" in bulkish,
            }

            def joint(s: Settings, flags: dict[str, bool] = flags) -> Awaitable[list[Row]]:
                return bench_bulk.run(s, **flags)

            runs.append(("+".join(bulkish), joint))
        else:
            runs.append((name, BENCHMARKS[name][1]))
    return runs


def environment() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
        **{
            dist: version(dist)
            for dist in ("monocloud-async", "aiohttp", "cattrs", "attrs", "orjson")
        },
    }


def write_results(path: Path, runs: dict[str, Any]) -> None:
    """Merge this invocation's benchmarks into ``path`` (others keep their last results)."""
    try:
        previous = json.loads(path.read_text())
        merged = previous.get("benchmarks", {}) if isinstance(previous, dict) else {}
    except (OSError, ValueError):
        merged = {}
    merged.update(runs)
    path.write_text(json.dumps({"benchmarks": merged}, indent=1) + "\n")


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", action="append", metavar="NAME", help="run only these")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per A/B comparison (>= 5)")
    parser.add_argument("--heavy-rounds", type=int, default=1, help="rounds of the rate-limit runs")
    parser.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, (summary, _) in BENCHMARKS.items():
            print(f"{name:10} {summary}")
        return 0
    if args.rounds < 5:
        parser.error("--rounds must be at least 5 (comparisons report medians)")
    if args.heavy_rounds < 1:
        parser.error("--heavy-rounds must be at least 1")
    settings = Settings(rounds=args.rounds, heavy_rounds=args.heavy_rounds, quick=args.quick)
    # Retries are expected here (fault injection): their WARNING lines would bury the table.
    logging.getLogger("monocloud_async").setLevel(logging.ERROR)
    env = environment()
    all_rows: list[Row] = []
    runs: dict[str, Any] = {}
    suite_start = time.perf_counter()
    for name, bench in plan(selected(args.only)):
        print(f"running {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        rows = await bench(settings)
        seconds = time.perf_counter() - start
        print(f"  {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
        all_rows.extend(rows)
        runs[name] = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
            "settings": vars(settings),
            "environment": env,
            "rows": [row.as_json() for row in rows],
        }
    total = time.perf_counter() - suite_start
    print(table(all_rows))
    met = [row.met for row in all_rows if row.met is not None]
    print(f"\n{sum(met)} of {len(met)} targets met; {total:.0f} s; medians of interleaved rounds")
    write_results(args.output, runs)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
