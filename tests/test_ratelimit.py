"""Tests for the rate-limit primitives, on virtual time.

Every test runs on the event loop's own clock made virtual (the ``vclock`` fixture): the loop
never blocks; when every task waits, its clock jumps to the next timer. So ``asyncio.sleep``
and everything built on it take no real time, and waits are exact to the float.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import pytest_asyncio

from monocloud_async._ratelimit import (
    AdaptiveRateLimiter,
    RateLimiter,
    RateLimitGate,
    RetryBudget,
    TokenBucket,
)
from monocloud_async.errors import ConfigurationError


@attrs.define
class VirtualClock:
    """The running loop's clock, made virtual; also a recording ``sleep``."""

    now: float
    sleeps: list[float] = attrs.Factory(list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(seconds)

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass for everyone."""
        await asyncio.sleep(seconds)


@pytest_asyncio.fixture(name="vclock")
async def _vclock(monkeypatch):
    """Make the test's event loop run on virtual time."""
    loop = asyncio.get_running_loop()
    clock = VirtualClock(now=loop.time())
    selector = loop._selector  # type: ignore[attr-defined]
    real_select = selector.select

    def select(timeout: float | None = None) -> list[Any]:
        events = real_select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            msg = "every task waits and no timer is set: deadlock"
            raise RuntimeError(msg)
        clock.now += timeout  # nothing to do until the next timer: jump to it
        return events

    monkeypatch.setattr(loop, "time", clock)
    monkeypatch.setattr(selector, "select", select)
    return clock


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- the discrete-event simulation of a throttling server --------------------------------


@attrs.define
class SimServer:
    """A server's token bucket: ``limit`` requests per second, burst ``limit / 10``."""

    clock: Callable[[], float]
    limit: float
    tokens: float = 0.0
    updated: float = 0.0

    def __attrs_post_init__(self) -> None:
        self.tokens = self.limit / 10
        self.updated = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.limit / 10, self.tokens + (now - self.updated) * self.limit)
        self.updated = now

    def set_limit(self, limit: float) -> None:
        self._refill()
        self.limit = limit
        self.tokens = min(self.tokens, limit / 10)

    def admit(self) -> bool:
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@attrs.define
class SimResult:
    """What the server saw: arrival times of admitted and throttled requests."""

    admitted: list[float] = attrs.Factory(list)
    throttled: list[float] = attrs.Factory(list)
    rates: list[tuple[float, float | None]] = attrs.Factory(list)

    def count(self, times: list[float], start: float, end: float) -> int:
        return sum(1 for t in times if start <= t < end)

    def achieved(self, start: float, end: float) -> float:
        """Admitted requests per second in [start, end)."""
        return self.count(self.admitted, start, end) / (end - start)

    def throttled_share(self, start: float, end: float) -> float:
        throttled = self.count(self.throttled, start, end)
        return throttled / (throttled + self.count(self.admitted, start, end))

    def first_time_at(self, rate: float, after: float, window: float = 0.5) -> float | None:
        """First time >= after when the admitted rate over the last ``window`` s reaches rate."""
        times = [t for t in self.admitted if t >= after - window]
        start = 0
        for end, t in enumerate(times):
            while times[start] <= t - window:
                start += 1
            if t >= after + window and (end - start + 1) / window >= rate:
                return t
        return None


async def simulate(
    clock: VirtualClock,
    limiter: AdaptiveRateLimiter,
    limits: list[tuple[float, float]],
    duration: float,
    *,
    concurrency: int = 64,
    latency: float = 0.05,
    seed: int = 7,
) -> SimResult:
    """Run ``concurrency`` senders for ``duration`` s against a server whose limit follows
    ``limits`` ((offset, limit) pairs); times in the result are offsets from the start."""
    rng = random.Random(seed)
    start = clock()
    server = SimServer(clock, limits[0][1])
    result = SimResult()

    async def sender() -> None:
        while True:
            await limiter.acquire()
            sent_at = clock()
            await asyncio.sleep(latency * rng.uniform(0.3, 0.7))  # on the way to the server
            admitted = server.admit()
            (result.admitted if admitted else result.throttled).append(clock() - start)
            await asyncio.sleep(latency * rng.uniform(0.3, 0.7))  # on the way back
            if admitted:
                limiter.on_success()
            else:
                limiter.on_throttle(sent_at)

    async def operator() -> None:
        for at, limit in limits[1:]:
            await asyncio.sleep(start + at - clock())
            server.set_limit(limit)

    async def sampler() -> None:
        while True:
            result.rates.append((clock() - start, limiter.rate))
            await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(sender()) for _ in range(concurrency)]
    tasks += [asyncio.create_task(operator()), asyncio.create_task(sampler())]
    await asyncio.sleep(duration)
    await _cancel(*tasks)
    return result
