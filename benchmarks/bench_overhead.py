"""1. Call overhead: ``add_phone`` requests/s against a raw aiohttp POST loop.

Both sides send the same request to the same plain aiohttp server (another process) and
JSON-decode the same User response with the same parser; the SDK also validates the input,
paces, structures the User and keeps its retry/rate-limit bookkeeping. Besides requests/s the
client's own CPU time per request is reported: it is what the SDK adds, and it is less
sensitive than wall time to a saturated server or a noisy machine.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from benchmarks._harness import Row, ServerProcess, Settings, interleave, median, spread
from monocloud_async import MonoCloudClient
from monocloud_async._convert import loads

USER_ID = "UOtBaOybB6dTpIJNrnkRw"
PHONE = "+919988776655"
API_KEY = "bench-key"


async def drive(
    concurrency: int, seconds: float, call: Callable[[], Awaitable[Any]]
) -> dict[str, float]:
    """Run ``concurrency`` workers calling ``call`` for ``seconds``; requests/s and CPU us/req."""
    done = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def worker() -> None:
        nonlocal done
        while loop.time() < deadline:
            await call()
            done += 1

    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"rps": done / wall, "cpu_us": cpu / done * 1e6, "requests": done}


def raw_caller(session: aiohttp.ClientSession, base: str) -> Callable[[], Awaitable[Any]]:
    url = f"{base}/api/users/{USER_ID}/phones"
    body = json.dumps(
        {"phone_number": PHONE, "is_verified": False, "skip_restriction_checks": False},
        separators=(",", ":"),
    ).encode()
    headers = {
        "X-API-Key": API_KEY,
        "Accept": "application/json, application/problem+json",
        "Content-Type": "application/json",
    }

    async def call() -> Any:
        async with session.post(url, data=body, headers=headers) as resp:
            data = await resp.read()
        return loads(data)

    return call


def sdk_caller(client: MonoCloudClient) -> Callable[[], Awaitable[Any]]:
    add_phone = client.users.add_phone

    async def call() -> Any:
        return await add_phone(USER_ID, PHONE)

    return call


async def run(settings: Settings) -> list[Row]:
    seconds = 0.6 if settings.quick else 1.5
    rows = []
    async with ServerProcess("raw") as server:
        connector = aiohttp.TCPConnector(limit=100)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            MonoCloudClient(domain=server.url, api_key=API_KEY) as client,
        ):
            raw, sdk = raw_caller(session, server.url), sdk_caller(client)
            for concurrency in (1, 32):
                # Warm-up: connections, caches, the client's first-contact probe.
                await drive(concurrency, 0.3, raw)
                await drive(concurrency, 0.3, sdk)
                got_sdk, got_raw = await interleave(
                    settings.rounds,
                    functools.partial(drive, concurrency, seconds, sdk),
                    functools.partial(drive, concurrency, seconds, raw),
                )
                sdk_rps = [g["rps"] for g in got_sdk]
                raw_rps = [g["rps"] for g in got_raw]
                sdk_cpu = [g["cpu_us"] for g in got_sdk]
                raw_cpu = [g["cpu_us"] for g in got_raw]
                ratio = median(sdk_rps) / median(raw_rps)
                target = concurrency == 32
                rows.append(
                    Row(
                        bench=f"1 overhead c={concurrency}: req/s SDK vs raw aiohttp",
                        measured=f"{median(sdk_rps):.0f} req/s",
                        baseline=f"{median(raw_rps):.0f} req/s",
                        ratio=ratio,
                        target=">= 0.95" if target else "(info)",
                        met=ratio >= 0.95 if target else None,
                        rounds=settings.rounds,
                        data={
                            "sdk_rps": sdk_rps,
                            "raw_rps": raw_rps,
                            "sdk_rps_spread": spread(sdk_rps),
                            "raw_rps_spread": spread(raw_rps),
                            "paired_ratio_median": median(
                                [s / r for s, r in zip(sdk_rps, raw_rps, strict=True)]
                            ),
                            "seconds_per_round": seconds,
                        },
                    )
                )
                rows.append(
                    Row(
                        bench=f"1 overhead c={concurrency}: client CPU per request",
                        measured=f"{median(sdk_cpu):.0f} us",
                        baseline=f"{median(raw_cpu):.0f} us",
                        ratio=median(sdk_cpu) / median(raw_cpu),
                        target="(info: SDK adds the difference)",
                        rounds=settings.rounds,
                        data={
                            "sdk_cpu_us": sdk_cpu,
                            "raw_cpu_us": raw_cpu,
                            "sdk_adds_us": median(sdk_cpu) - median(raw_cpu),
                        },
                    )
                )
    return rows
