"""3, 4b and 5: bulk runs against FakeMonoCloud in another process.

3. Bulk efficiency under latency: 5,000 items, 20 ms server latency, concurrency 50. The
   ideal is items / concurrency * latency = 2.0 s; the score is ideal / measured.
5. Faults: the same bulk with 5% 503s and 2% dropped connections, interleaved round by round
   with the fault-free run (which is also benchmark 3's run): zero failed items, attempts per
   item, and throughput against the fault-free run.
4b. Outage amplification: 2,000 items against a fake answering 503 to everything: how many
   requests per item the client sends (the retry budget should stop retries) and how soon the
   run ends, every item failed.

Each run uses a new client, as a script would, so connection set-up is part of the run.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from benchmarks._harness import Row, ServerProcess, Settings, ab_order, items, median, spread
from monocloud_async import MonoCloudClient, RetryPolicy

LATENCY = 0.020
CONCURRENCY = 50
SHORT_BACKOFF = RetryPolicy(initial_backoff=0.1)


async def bulk_run(
    server: ServerProcess, n: int, concurrency: int, prefix: str, **options: Any
) -> dict[str, Any]:
    """One bulk run of ``n`` generated items; client and server counts."""
    await server.reset()
    async with MonoCloudClient(domain=server.url, api_key=server.api_key, **options) as client:
        done: list[float] = []
        results = []
        start, cpu = time.perf_counter(), time.process_time()
        async with client.users.add_phones(items(n, prefix), concurrency=concurrency) as run:
            async for result in run:
                done.append(time.perf_counter())
                results.append(result)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    stats = await server.stats()
    errors = collections.Counter(type(r.error).__name__ for r in results if r.error)
    failed = sum(1 for r in results if not r.ok)
    return {
        "elapsed": elapsed,
        # When 99% of the items were done: the rest is the tail (retries waiting out backoff).
        "elapsed_99": done[int(len(done) * 0.99) - 1] - start if done else elapsed,
        "items": n,
        "succeeded": len(results) - failed,
        "failed": failed,
        "attempts": sum(r.attempts for r in results),
        "max_attempts": max((r.attempts for r in results), default=0),
        "errors": dict(errors),
        "server_requests": stats["requests"],
        "server_failures": stats["failures"],
        "server_disconnects": stats["disconnects"],
        "max_in_flight": stats["max_in_flight"],
        # Share of the run each process spent on a CPU: near 1.0 means that side is the limit.
        "client_busy": cpu / elapsed,
        "server_busy": stats["cpu_s"] / elapsed,
    }


async def run(
    settings: Settings, *, bulk: bool = True, faults: bool = True, outage: bool = True
) -> list[Row]:
    n = settings.scale(5000, 1500)
    ideal = n / CONCURRENCY * LATENCY
    clean: list[dict[str, Any]] = []
    faulty: list[dict[str, Any]] = []
    short: list[dict[str, Any]] = []
    async with ServerProcess("fake") as server:
        await server.configure(latency=LATENCY)
        await bulk_run(server, 200, CONCURRENCY, "warm")  # the server's first requests

        async def clean_run(r: int) -> None:
            await server.configure(fail_rate=0.0, disconnect_rate=0.0)
            clean.append(await bulk_run(server, n, CONCURRENCY, f"c{r}-"))

        async def faulty_run(r: int) -> None:
            await server.configure(fail_rate=0.05, disconnect_rate=0.02)
            faulty.append(await bulk_run(server, n, CONCURRENCY, f"f{r}-"))
            # The same faults with a shorter first backoff: how much of the cost is waiting.
            short.append(await bulk_run(server, n, CONCURRENCY, f"s{r}-", retry=SHORT_BACKOFF))

        for r, clean_first in ab_order(settings.rounds if bulk or faults else 0):
            if not faults:
                await clean_run(r)
            elif clean_first:
                await clean_run(r)
                await faulty_run(r)
            else:
                await faulty_run(r)
                await clean_run(r)

        down = None
        if outage:
            await server.configure(latency=0.0, fail_rate=1.0, disconnect_rate=0.0)
            down = await bulk_run(server, settings.scale(2000, 1000), CONCURRENCY, "o-")
            await server.configure(fail_rate=0.0)

    rows = []
    clean_elapsed = [c["elapsed"] for c in clean]
    if bulk:
        score = ideal / median(clean_elapsed)
        rows.append(
            Row(
                bench=f"3 bulk {n} items, 20 ms latency, c={CONCURRENCY}: ideal/measured",
                measured=f"{median(clean_elapsed):.2f} s",
                baseline=f"{ideal:.2f} s ideal",
                ratio=score,
                target=">= 0.90",
                met=score >= 0.90,
                rounds=len(clean),
                data={
                    "elapsed": clean_elapsed,
                    "spread": spread(clean_elapsed),
                    "failed": [c["failed"] for c in clean],
                    "max_in_flight": [c["max_in_flight"] for c in clean],
                    "client_busy": [round(c["client_busy"], 3) for c in clean],
                    "server_busy": [round(c["server_busy"], 3) for c in clean],
                },
            )
        )
    if faults:
        faulty_elapsed = [f["elapsed"] for f in faulty]
        throughput = median(clean_elapsed) / median(faulty_elapsed)
        failed = sum(f["failed"] for f in faulty)
        per_item = [f["attempts"] / f["items"] for f in faulty]
        rows.append(
            Row(
                bench="5 faults (5% 503, 2% disconnect): throughput vs fault-free",
                measured=f"{median(faulty_elapsed):.2f} s",
                baseline=f"{median(clean_elapsed):.2f} s",
                ratio=throughput,
                target=">= 0.85",
                met=throughput >= 0.85,
                rounds=len(faulty),
                data={
                    "faulty_elapsed": faulty_elapsed,
                    "clean_elapsed": clean_elapsed,
                    "faulty_elapsed_99": [f["elapsed_99"] for f in faulty],
                    "clean_elapsed_99": [c["elapsed_99"] for c in clean],
                    "throughput_99": median([c["elapsed_99"] for c in clean])
                    / median([f["elapsed_99"] for f in faulty]),
                },
            )
        )
        short_elapsed = [f["elapsed"] for f in short]
        rows.append(
            Row(
                bench="5 faults, RetryPolicy(initial_backoff=0.1): throughput",
                measured=f"{median(short_elapsed):.2f} s",
                baseline=f"{median(clean_elapsed):.2f} s",
                ratio=median(clean_elapsed) / median(short_elapsed),
                target="(info: default backoff is 0.5 s)",
                rounds=len(short),
                data={
                    "elapsed": short_elapsed,
                    "failed": [f["failed"] for f in short],
                    "attempts_per_item": [f["attempts"] / f["items"] for f in short],
                },
            )
        )
        rows.append(
            Row(
                bench="5 faults: failed items; attempts per item",
                measured=f"{failed} failed; {median(per_item):.3f} att/item (max {max(per_item):.3f})",
                target="0 failed; <= 1.10",
                met=failed == 0 and max(per_item) <= 1.10,
                rounds=len(faulty),
                data={
                    "runs": faulty,
                },
            )
        )
    if down is not None:
        per_item_outage = down["server_requests"] / down["items"]
        all_failed = down["failed"] == down["items"]
        prompt = down["elapsed"] <= 5.0
        rows.append(
            Row(
                bench=f"4b outage: {down['items']} items vs 503 to everything, c={CONCURRENCY}",
                measured=(
                    f"{per_item_outage:.3f} req/item; {down['failed']} failed; "
                    f"{down['elapsed']:.2f} s"
                ),
                target="<= 1.10 req/item; all failed; <= 5 s",
                ratio=per_item_outage,
                met=per_item_outage <= 1.10 and all_failed and prompt,
                rounds=1,
                data=down,
            )
        )
    return rows
