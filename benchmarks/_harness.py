"""Shared pieces: settings, result rows, medians, server subprocesses, the table."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, TypeVar

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "tests" / "samples" / "user.json"
T = TypeVar("T")


@dataclass
class Settings:
    """What the command line asked for."""

    rounds: int = 5  # rounds of every A/B comparison (at least 5)
    heavy_rounds: int = 1  # rounds of the ~20 s rate-limit runs
    quick: bool = False  # smaller sizes and shorter windows, for a smoke run

    def scale(self, full: int, quick: int) -> int:
        return quick if self.quick else full


@dataclass
class Row:
    """One line of the results table (and one entry of results.json)."""

    bench: str
    measured: str
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    rounds: int = 1
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "measured": self.measured,
            "baseline": self.baseline,
            "ratio": None if self.ratio is None else round(self.ratio, 4),
            "target": self.target,
            "met": self.met,
            "rounds": self.rounds,
            "data": self.data,
        }


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> str:
    """``min..max`` of the rounds, for the eye."""
    return f"{min(values):.3g}..{max(values):.3g}" if values else ""


def ab_order(rounds: int) -> Iterator[tuple[int, bool]]:
    """Yield ``(round, a_first)``: A B, B A, A B, ... so neither side always goes first."""
    for r in range(rounds):
        yield r, r % 2 == 0


async def interleave(
    rounds: int,
    a: Callable[[], Awaitable[T]],
    b: Callable[[], Awaitable[T]],
) -> tuple[list[T], list[T]]:
    """Run ``a`` and ``b`` alternately ``rounds`` times each; return both lists of values."""
    got_a: list[T] = []
    got_b: list[T] = []
    for _, a_first in ab_order(rounds):
        if a_first:
            got_a.append(await a())
            got_b.append(await b())
        else:
            got_b.append(await b())
            got_a.append(await a())
    return got_a, got_b


class ServerProcess:
    """A server from ``benchmarks._servers`` in its own process."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.control: str | None = None
        self.api_key = "bench-key"
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks._servers",
            self.kind,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not line:
            raise RuntimeError(f"the {self.kind} server process did not start")
        info = json.loads(line)
        self.url, self.control = info["url"], info["control"]
        self.api_key = info.get("api_key", self.api_key)
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        proc = self.proc
        if proc is not None and proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    def _controls(self) -> tuple[aiohttp.ClientSession, str]:
        if self._session is None or self.control is None:
            raise RuntimeError(f"the {self.kind} server has no control endpoint")
        return self._session, self.control

    async def configure(self, **change: Any) -> None:
        session, control = self._controls()
        async with session.post(f"{control}/config", json=change) as resp:
            resp.raise_for_status()

    async def reset(self) -> None:
        session, control = self._controls()
        async with session.post(f"{control}/reset") as resp:
            resp.raise_for_status()

    async def stats(self) -> dict[str, Any]:
        session, control = self._controls()
        async with session.get(f"{control}/stats") as resp:
            resp.raise_for_status()
            got: dict[str, Any] = await resp.json()
            return got


def items(n: int, prefix: str = "u") -> Iterator[tuple[str, str]]:
    """``n`` distinct (user_id, E.164 phone) pairs, generated lazily."""
    for i in range(n):
        yield f"{prefix}{i:07d}", f"+1555{i:07d}"


def verdict(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: "-"}[met]


def table(rows: Sequence[Row]) -> str:
    """A Markdown table of the rows."""
    head = [
        "benchmark",
        "measured (median)",
        "baseline (median)",
        "ratio",
        "target",
        "met",
        "rounds",
    ]
    lines = [head]
    for row in rows:
        ratio = "" if row.ratio is None else f"{row.ratio:.3f}"
        lines.append(
            [
                row.bench,
                row.measured,
                row.baseline,
                ratio,
                row.target,
                verdict(row.met),
                str(row.rounds),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = []
    for n, line in enumerate(lines):
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
        if n == 0:
            out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)
