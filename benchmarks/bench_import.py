"""7. Import time: ``import monocloud_async`` against ``import aiohttp`` alone.

Each side runs in a fresh interpreter under ``python -X importtime``, alternately, several
times, with bytecode caches (in a temporary ``PYTHONPYCACHEPREFIX``, warmed up first, so
neither side is compiled from source); the cumulative microseconds of the top-level import
are compared as medians. The row's
data also lists the modules our import loads beyond aiohttp's, by their own time, which is
where any excess comes from.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections import defaultdict

from benchmarks._harness import ROOT, Row, Settings, ab_order, median


def parse(stderr: str, top: str) -> tuple[float, dict[str, float]]:
    """The cumulative us of ``top`` and every module's own us from ``-X importtime`` output."""
    cumulative = float("nan")
    own: dict[str, float] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        fields = line.removeprefix("import time:").split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue
        name = fields[2].rstrip()
        own[name.strip()] = float(fields[0])
        if name.strip() == top and name == " " + top:
            cumulative = float(fields[1])
    return cumulative, own


def cached_bytecode_env(prefix: str) -> dict[str, str]:
    """The environment with bytecode caches on, kept under ``prefix`` (not in the tree).

    An installed wheel has its ``.pyc`` files; without them (``PYTHONDONTWRITEBYTECODE=1``,
    as on this machine) our modules would be compiled from source on every import while
    aiohttp's came precompiled from site-packages, which is not the comparison users see.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = prefix
    return env


async def importtime(module: str, env: dict[str, str]) -> tuple[float, dict[str, float]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-X",
        "importtime",
        "-c",
        f"import {module}",
        cwd=ROOT,
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    return parse(err.decode(), module)


async def run(settings: Settings) -> list[Row]:
    rounds = max(settings.rounds, 5) * 3  # cheap and noisy: more rounds
    ours: list[float] = []
    theirs: list[float] = []
    own_ours: dict[str, list[float]] = defaultdict(list)
    aiohttp_modules: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="monocloud-bench-pycache-") as prefix:
        env = cached_bytecode_env(prefix)
        for module in ("monocloud_async", "aiohttp"):  # warm-up: writes the caches
            await importtime(module, env)
        for _, ours_first in ab_order(rounds):
            order = ("monocloud_async", "aiohttp") if ours_first else ("aiohttp", "monocloud_async")
            for module in order:
                cumulative, own = await importtime(module, env)
                if module == "aiohttp":
                    theirs.append(cumulative)
                    aiohttp_modules.update(own)
                else:
                    ours.append(cumulative)
                    for name, us in own.items():
                        own_ours[name].append(us)
    ratio = median(ours) / median(theirs)
    extra = {
        name: median(values) for name, values in own_ours.items() if name not in aiohttp_modules
    }
    top_extra = dict(sorted(extra.items(), key=lambda kv: -kv[1])[:15])
    return [
        Row(
            bench="7 import time: monocloud_async vs aiohttp alone",
            measured=f"{median(ours) / 1000:.1f} ms",
            baseline=f"{median(theirs) / 1000:.1f} ms",
            ratio=ratio,
            target="<= 1.25",
            met=ratio <= 1.25,
            rounds=rounds,
            data={
                "ours_us": ours,
                "aiohttp_us": theirs,
                "extra_modules_own_us": top_extra,
                "extra_total_own_us": sum(extra.values()),
            },
        )
    ]
