"""4. Rate-limit utilisation against FakeMonoCloud's token bucket (another process).

The fake allows 300 requests/s with a burst of 30; the client runs 6,000 items at concurrency
64 with no client-side rate:

(a) the fake sends rate-limit headers: items/s achieved against the limit, and 429s;
(b) no headers (``headers=False``): the client's adaptive rate must find the limit;
(c) the limit halves (150/s, burst 15) 6 s into the run and is restored 6 s later: 429s in
    the window from 1 s after the drop to the restore, and how soon the admitted rate climbs
    back to 0.9 of the restored limit. Run with headers and without.

Changes are scheduled on the server's own clock; the server samples its counters every 10 ms,
and those timelines give the windows of (c). Each run takes about 20 s, so these run
``--heavy-rounds`` times (default 1) rather than ``--rounds``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from benchmarks._harness import Row, ServerProcess, Settings, items, median
from monocloud_async import MonoCloudClient

RATE = 300.0
BURST = 30.0
CONCURRENCY = 64


def counts_at(timeline: list[list[float]], t: float) -> list[float]:
    """The server's counters at time ``t`` (the first sample at or after it)."""
    for row in timeline:
        if row[0] >= t:
            return row
    return timeline[-1]


def window(timeline: list[list[float]], start: float, end: float) -> tuple[float, float]:
    """Requests and 429s the server saw between ``start`` and ``end``."""
    a, b = counts_at(timeline, start), counts_at(timeline, end)
    return b[1] - a[1], b[2] - a[2]


def recovery_time(timeline: list[list[float]], restored_at: float, limit: float) -> float | None:
    """Seconds from the restore until 0.5 s of admitted requests run at >= 0.9 of ``limit``."""
    span = 0.5
    for row in timeline:
        t = row[0]
        if t - span < restored_at:
            continue
        requests, limited = window(timeline, t - span, t)
        if (requests - limited) / span >= 0.9 * limit:
            return t - restored_at
    return None


async def limited_run(
    server: ServerProcess,
    n: int,
    *,
    headers: bool,
    schedule: Sequence[tuple[float, dict[str, Any]]],
) -> dict[str, Any]:
    await server.configure(rate=RATE, burst=BURST, headers=headers, fresh=True)
    await server.reset()
    for at, change in schedule:
        await server.configure(at=at, **change)
    async with MonoCloudClient(domain=server.url, api_key=server.api_key) as client:
        start = time.perf_counter()
        report = await client.users.add_phones(items(n), concurrency=CONCURRENCY).collect()
        elapsed = time.perf_counter() - start
    stats = await server.stats()
    return {
        "elapsed": elapsed,
        "items": n,
        "succeeded": report.succeeded,
        "failed": report.failed,
        "attempts": report.attempts,
        "requests": stats["requests"],
        "rate_limited": stats["rate_limited"],
        "events": stats["events"],
        "timeline": stats["timeline"],
    }


def steady(run: dict[str, Any]) -> dict[str, Any]:
    achieved = run["succeeded"] / run["elapsed"]
    timeline = run["timeline"]
    first_requests, first_limited = window(timeline, 0.0, 1.0)
    last = timeline[-1][0]
    late_requests, late_limited = window(timeline, 1.0, last)
    return {
        "rate_limited_first_second": first_limited,
        "requests_first_second": first_requests,
        "share_429_after_first_second": late_limited / max(1, late_requests),
        "admitted_rps_after_first_second": (late_requests - late_limited) / max(1e-9, last - 1.0),
        "achieved_rps": achieved,
        "share_of_limit": achieved / RATE,
        "share_429": run["rate_limited"] / max(1, run["requests"]),
        "failed": run["failed"],
        "elapsed": run["elapsed"],
        "requests": run["requests"],
        "rate_limited": run["rate_limited"],
    }


def halving(run: dict[str, Any]) -> dict[str, Any]:
    events = run["events"]
    dropped_at, restored_at = events[0]["t"], events[1]["t"]
    timeline = run["timeline"]
    requests, limited = window(timeline, dropped_at + 1.0, restored_at)
    return {
        "share_429_after_drop": limited / max(1, requests),
        "requests_after_drop": requests,
        "rate_limited_after_drop": limited,
        "recovery_s": recovery_time(timeline, restored_at, RATE),
        "share_429_total": run["rate_limited"] / max(1, run["requests"]),
        "failed": run["failed"],
        "elapsed": run["elapsed"],
        "dropped_at": dropped_at,
        "restored_at": restored_at,
    }


async def run(settings: Settings) -> list[Row]:
    n = settings.scale(6000, 2000)
    drop_at = settings.scale(6, 2)
    rows = []
    heavy = settings.heavy_rounds
    async with ServerProcess("fake") as server:
        for headers, label, min_share, max_429 in (
            (True, "4(a) headers", 0.98, 0.001),
            (False, "4(b) no headers (adaptive)", 0.95, 0.005),
        ):
            got = [
                steady(await limited_run(server, n, headers=headers, schedule=[]))
                for _ in range(heavy)
            ]
            share = median([g["share_of_limit"] for g in got])
            share_429 = median([g["share_429"] for g in got])
            failed = sum(g["failed"] for g in got)
            rows.append(
                Row(
                    bench=f"{label}: {n} items at 300/s, c={CONCURRENCY}",
                    measured=(f"{share * RATE:.1f} items/s; 429s {share_429:.2%}; {failed} failed"),
                    baseline=f"{RATE:.0f}/s limit",
                    ratio=share,
                    target=f">= {min_share}; 429s <= {max_429:.1%}; 0 failed",
                    met=share >= min_share and share_429 <= max_429 and failed == 0,
                    rounds=heavy,
                    data={"runs": got},
                )
            )
        for headers in (True, False):
            schedule = [
                (drop_at, {"rate": RATE / 2, "burst": BURST / 2, "headers": headers}),
                (2 * drop_at, {"rate": RATE, "burst": BURST, "headers": headers}),
            ]
            got = [
                halving(await limited_run(server, n, headers=headers, schedule=schedule))
                for _ in range(heavy)
            ]
            share_429 = median([g["share_429_after_drop"] for g in got])
            recoveries = [g["recovery_s"] for g in got]
            recovered = all(r is not None for r in recoveries)
            recovery = median([r for r in recoveries if r is not None]) if recovered else None
            failed = sum(g["failed"] for g in got)
            rec_text = f"{recovery:.2f} s" if recovery is not None else "never"
            rows.append(
                Row(
                    bench=(
                        f"4(c) limit halves at {drop_at} s, back at {2 * drop_at} s "
                        f"({'headers' if headers else 'no headers'})"
                    ),
                    measured=(
                        f"429s after drop {share_429:.2%}; back to 0.9 in {rec_text}; "
                        f"{failed} failed"
                    ),
                    target="429s <= 1%; <= 3 s; 0 failed",
                    ratio=None,
                    met=share_429 <= 0.01 and recovered and (recovery or 0) <= 3.0 and failed == 0,
                    rounds=heavy,
                    data={"runs": got},
                )
            )
    return rows
