"""Profile the hot path: benchmark 1's SDK side (``add_phone`` at concurrency 32) under cProfile.

``python -m benchmarks.profile [--concurrency 32] [--seconds 4] [--top 30] [--raw | --bulk N]``

Prints the functions with the most own time, then the own time grouped by where the code
lives (our modules one by one, aiohttp, asyncio, ...), as a share of the profiled CPU time
and in microseconds per request. ``--raw`` profiles the raw aiohttp loop instead, to see
what any client pays; ``--bulk N`` profiles benchmark 3 instead (``add_phones`` of N items at
concurrency 50 against FakeMonoCloud with 20 ms latency). ``--save FILE`` keeps the pstats
file for snakeviz and friends.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
from collections import defaultdict
from pathlib import Path

import aiohttp

from benchmarks._harness import ServerProcess, items
from benchmarks.bench_overhead import API_KEY, drive, raw_caller, sdk_caller
from monocloud_async import MonoCloudClient


def group_of(filename: str) -> str:
    """Where a profiled function lives: ``monocloud_async/_retry.py``, ``aiohttp``, ..."""
    path = Path(filename)
    parts = path.parts
    if "monocloud_async" in parts:
        return "monocloud_async/" + "/".join(parts[parts.index("monocloud_async") + 1 :])
    if filename.startswith("<monocloud_async"):
        return "monocloud_async/_convert.py (generated)"
    for package in ("aiohttp", "yarl", "multidict", "attr", "cattrs", "tenacity", "orjson"):
        if package in parts:
            return package
    if "asyncio" in parts:
        return "asyncio"
    if filename.startswith("<") or filename == "~":
        return "builtins/C"
    return "stdlib/other: " + path.name


async def profiled_bulk(args: argparse.Namespace) -> tuple[cProfile.Profile, int]:
    async with ServerProcess("fake") as server:
        await server.configure(latency=0.02)
        async with MonoCloudClient(domain=server.url, api_key=server.api_key) as client:
            await client.users.add_phones(items(500, "w"), concurrency=50).collect()
        async with MonoCloudClient(domain=server.url, api_key=server.api_key) as client:
            profile = cProfile.Profile()
            profile.enable()
            await client.users.add_phones(items(args.bulk), concurrency=50).collect()
            profile.disable()
    return profile, args.bulk


async def profiled(args: argparse.Namespace) -> tuple[cProfile.Profile, int]:
    if args.bulk:
        return await profiled_bulk(args)
    async with ServerProcess("raw") as server:
        connector = aiohttp.TCPConnector(limit=100)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            MonoCloudClient(domain=server.url, api_key=API_KEY) as client,
        ):
            call = raw_caller(session, server.url) if args.raw else sdk_caller(client)
            await drive(args.concurrency, 0.5, call)  # warm-up, not profiled
            profile = cProfile.Profile()
            profile.enable()
            got = await drive(args.concurrency, args.seconds, call)
            profile.disable()
    return profile, int(got["requests"])


def report(profile: cProfile.Profile, requests: int, top: int) -> None:
    stats = pstats.Stats(profile)
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in raw.values())
    print(
        f"{requests} requests, {total:.2f} s profiled CPU, {total / requests * 1e6:.0f} us/request\n"
    )
    print(f"top {top} functions by own time:")
    print(f"{'own %':>6} {'us/req':>7} {'cum us/req':>10} {'calls/req':>9}  function")
    ranked = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    for (filename, line, name), (_, ncalls, tt, ct, _) in ranked:
        where = f"{group_of(filename)}:{line}" if line else group_of(filename)
        print(
            f"{tt / total:6.1%} {tt / requests * 1e6:7.1f} {ct / requests * 1e6:10.1f} "
            f"{ncalls / requests:9.2f}  {name}  ({where})"
        )
    groups: dict[str, float] = defaultdict(float)
    for (filename, _, _), (_, _, tt, _, _) in raw.items():
        groups[group_of(filename)] += tt
    print("\nown time by location:")
    for group, tt in sorted(groups.items(), key=lambda kv: kv[1], reverse=True):
        if tt / total >= 0.005:
            print(f"{tt / total:6.1%} {tt / requests * 1e6:7.1f} us/req  {group}")
    print("\nthe SDK's own functions by own time:")
    mine = [kv for kv in raw.items() if group_of(kv[0][0]).startswith("monocloud_async")]
    for (filename, line, name), (_, ncalls, tt, ct, _) in sorted(mine, key=lambda kv: -kv[1][2])[
        :top
    ]:
        print(
            f"{tt / total:6.1%} {tt / requests * 1e6:7.1f} {ct / requests * 1e6:10.1f} "
            f"{ncalls / requests:9.2f}  {name}  ({group_of(filename)}:{line})"
        )
    ours = sum(tt for g, tt in groups.items() if g.startswith("monocloud_async"))
    print(
        f"\nmonocloud_async own time: {ours / total:.1%} ({ours / requests * 1e6:.1f} us/request)"
    )
    print("\ncumulative time of the SDK's entry points (includes what they call):")
    for (filename, line, name), (_, _, _, ct, _) in sorted(raw.items(), key=lambda kv: -kv[1][3]):
        if group_of(filename).startswith("monocloud_async") and ct / total > 0.03:
            print(
                f"{ct / total:6.1%} {ct / requests * 1e6:7.1f} us/req  {name}  ({group_of(filename)}:{line})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--raw", action="store_true", help="profile the raw aiohttp loop")
    parser.add_argument("--bulk", type=int, default=0, metavar="N", help="profile a bulk run")
    parser.add_argument("--save", help="write the pstats data to this file")
    args = parser.parse_args()
    profile, requests = asyncio.run(profiled(args))
    if args.save:
        profile.dump_stats(args.save)
    report(profile, requests, args.top)


if __name__ == "__main__":
    main()
