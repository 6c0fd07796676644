"""6. Memory: a bulk run's peak RSS must not grow with the number of items.

Bulk runs over 20,000 and 100,000 generated items against a zero-latency FakeMonoCloud
(``record_requests=False``, in another process). Each size runs in a fresh Python process
(``python -m benchmarks.bench_memory child URL KEY N``) that warms up first (imports, the
connection pool, a 500-item run), resets the peak (``/proc/self/clear_refs``) and reads its
RSS, then streams the big run (results are read and dropped, as a consumer would) and reads
the peak (``VmHWM``; ``resource.getrusage``'s ``ru_maxrss`` where there is no ``/proc``). The growth must be the same within 10 MB for both sizes: items are
pulled lazily and memory stays O(concurrency).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import ROOT, Row, ServerProcess, Settings, items
from monocloud_async import MonoCloudClient

CONCURRENCY = 50


def peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` where Linux has it, else ``ru_maxrss``.

    ``ru_maxrss`` also counts the memory of the process that forked us as it was at the
    ``exec`` (the benchmark runner's, tens of MB), which would hide our own peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def current_rss_mb() -> float | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * resource.getpagesize() / 2**20


async def child(url: str, api_key: str, n: int) -> dict[str, Any]:
    async with MonoCloudClient(domain=url, api_key=api_key) as client:
        async with client.users.add_phones(items(500, "w"), concurrency=CONCURRENCY) as run:
            async for _ in run:
                pass
        gc.collect()
        # Start the peak from here (Linux: writing 5 to clear_refs resets the high-water mark),
        # so what start-up and warm-up touched does not hide the run's own peak.
        reset = reset_peak()
        before = (current_rss_mb() if reset else None) or peak_rss_mb()
        ok = failed = 0
        start = time.perf_counter()
        async with client.users.add_phones(items(n), concurrency=CONCURRENCY) as run:
            async for result in run:
                if result.ok:
                    ok += 1
                else:
                    failed += 1
        elapsed = time.perf_counter() - start
        after = peak_rss_mb()
    return {
        "items": n,
        "before_mb": before,
        "after_mb": after,
        "growth_mb": after - before,
        "peak_reset": reset,
        "rss_at_end_mb": current_rss_mb(),
        "ok": ok,
        "failed": failed,
        "elapsed": elapsed,
    }


async def measure(server: ServerProcess, n: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "benchmarks.bench_memory",
        "child",
        server.url,
        server.api_key,
        str(n),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"the memory child for {n} items failed ({proc.returncode})")
    got: dict[str, Any] = json.loads(out)
    return got


async def run(settings: Settings) -> list[Row]:
    small, large = settings.scale(20_000, 4_000), settings.scale(100_000, 20_000)
    async with ServerProcess("fake") as server:
        got_small = await measure(server, small)
        got_large = await measure(server, large)
    difference = got_large["growth_mb"] - got_small["growth_mb"]
    failed = got_small["failed"] + got_large["failed"]
    return [
        Row(
            bench=f"6 memory: peak RSS growth, {small} vs {large} items",
            measured=f"{got_large['growth_mb']:+.1f} MB, peak {got_large['after_mb']:.0f} MB ({large})",
            baseline=f"{got_small['growth_mb']:+.1f} MB, peak {got_small['after_mb']:.0f} MB ({small})",
            ratio=None,
            target="same within 10 MB",
            met=abs(difference) <= 10.0 and failed == 0,
            rounds=1,
            data={"small": got_small, "large": got_large, "difference_mb": difference},
        )
    ]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "child":
        logging.getLogger("monocloud_async").setLevel(logging.ERROR)
        result = asyncio.run(child(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        print(json.dumps(result))
    else:
        sys.exit("usage: python -m benchmarks.bench_memory child URL API_KEY ITEMS")
