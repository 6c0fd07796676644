"""Pacing: when a client may send, composed from the primitives in ``_ratelimit``.

Before every request a call passes the client's 429 gate, the caller's limiter (if any) and
the client's own rate (announced by the server's headers, or learned from its 429s). After
every response the pacer reads the rate-limit headers and adjusts all three.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Protocol, runtime_checkable

import attrs

from monocloud_async import errors
from monocloud_async._ratelimit import AdaptiveRateLimiter, RateLimiter, RateLimitGate
from monocloud_async._sansio import (
    NO_RATE_LIMIT_INFO,
    RateLimitInfo,
    parse_rate_limit,
    parse_retry_after,
)

__all__ = ["HEADER_RATE_MARGIN", "Pacer"]

#: Share of a server-announced rate the client sends at: jitter on the way to the server
#: must not turn a client running exactly at the limit into 429s and whole-second stalls.
HEADER_RATE_MARGIN: Final = 0.99

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@runtime_checkable
class SharedRateLimiter(Protocol):
    """A ``rate_limiter`` that also shares 429s with other clients (``RedisRateLimiter``).

    Besides ``acquire()``, the client tells it about every 429 and every success, so that a
    429 seen by one process pauses the whole fleet and learned rate cuts apply fleet-wide.
    """

    async def acquire(self) -> None:
        """Wait until a request may be sent."""

    async def on_throttle(self, retry_after: float | None) -> None:
        """A 429 arrived; ``retry_after`` is the server's stated wait, if any."""

    def on_success(self) -> None:
        """A request succeeded (cheap, synchronous)."""


@attrs.define(eq=False)
class Pacer:
    """Decides when each request of one client may go out.

    Attributes:
        gate: The shared "resume at" gate closed by 429s and by ``remaining: 0`` answers.
        limiter: The caller's own limiter (``rate_limiter=``), or None.
        adaptive: The client's own rate: unlimited until the server announces a rate in its
            headers (then followed) or, with no caller limiter and no headers, learned from
            throttling.
    """

    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep
    wall_clock: Clock = time.time
    limiter: RateLimiter | None = None
    gate: RateLimitGate = attrs.field(init=False)
    adaptive: AdaptiveRateLimiter = attrs.field(init=False)
    _announced: float | None = attrs.field(init=False, default=None)
    _probe: asyncio.Event | None = attrs.field(init=False, default=None)
    _probing: bool = attrs.field(init=False, default=False)
    shared: SharedRateLimiter | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.gate = RateLimitGate(clock=self.clock, sleep=self.sleep)
        self.adaptive = AdaptiveRateLimiter(clock=self.clock, sleep=self.sleep)
        if isinstance(self.limiter, SharedRateLimiter):
            self.shared = self.limiter

    @property
    def learning(self) -> bool:
        """Whether the client is learning the limit from 429s (no limiter, no headers)."""
        return self.limiter is None and self._announced is None

    @property
    def probed(self) -> bool:
        """Whether the client's first request has been answered (or has failed)."""
        return self._probe is not None and self._probe.is_set()

    def gate_wait(self) -> float:
        """Seconds until the shared gate opens (0 when open)."""
        return self.gate.wait_time()

    def may_send_now(self) -> bool:
        """Whether a request may go out without waiting at all (the common case).

        True only with the first contact made, the gate open, no caller limiter and no rate
        in force; it then counts the send for the learned rate. Otherwise the caller awaits
        :meth:`before_send`, which handles every waiting case.
        """
        return (
            self.limiter is None
            and self.probed
            and self.gate.wait_time() <= 0
            and self.adaptive.acquire_nowait()
        )

    async def before_send(self, deadline_at: float | None, max_wait: float) -> None:
        """Wait until this client may send.

        Raises:
            RateLimitError: the gate stays closed longer than ``max_wait`` or the deadline.
        """
        if self._probe is None or not self._probe.is_set():
            await self._first_contact()
        wait = self.gate.wait_time()
        if wait > 0:
            if wait > max_wait or (deadline_at is not None and self.clock() + wait > deadline_at):
                limit = (
                    "the deadline allows" if wait <= max_wait else f"max_retry_after ({max_wait} s)"
                )
                raise errors.RateLimitError(
                    f"429 Too Many Requests: rate limited for {wait:.2f} s, longer than {limit}",
                    status=429,
                    retry_after=wait,
                )
            await self.gate.wait()
        if self.limiter is not None:
            await self.limiter.acquire()
        await self.adaptive.acquire()

    async def _first_contact(self) -> None:
        # Until the server has answered once we know nothing about its limit, so the first
        # request of a client goes alone; everyone else waits for its headers (one round
        # trip, once per client) instead of a whole burst meeting an unknown limit.
        if self._probe is None:
            self._probe = asyncio.Event()
            self._probing = True
            return
        if self._probing and not self._probe.is_set():
            await self._probe.wait()

    def observe(self, status: int, headers: Mapping[str, str]) -> RateLimitInfo:
        """Learn from a response: announced rates, ``remaining: 0``, successes."""
        if self._probe is not None and not self._probe.is_set():
            self._probe.set()
        info = (
            parse_rate_limit(headers, self.wall_clock())
            if _has_rate_headers(headers)
            else (NO_RATE_LIMIT_INFO)
        )
        if info is not NO_RATE_LIMIT_INFO:
            rate = info.rate
            if rate is not None and rate > 0 and rate != self._announced:
                self._announced = rate
                burst = info.burst if info.burst is not None and info.burst >= 1 else None
                self.adaptive.set_rate(rate * HEADER_RATE_MARGIN, burst)
            if info.remaining is not None and info.remaining <= 0 and info.reset:
                self.gate.close_until(self.clock() + info.reset)
        if 200 <= status < 300:  # noqa: PLR2004
            if self.learning:
                self.adaptive.on_success()
            elif self.shared is not None:
                self.shared.on_success()
        return info

    def on_throttle(
        self, headers: Mapping[str, str], info: RateLimitInfo, sent_at: float
    ) -> float | None:
        """Handle a 429: close the shared gate for the stated time and cut a learned rate.

        Returns the server's stated wait in seconds (``Retry-After``, else the rate-limit
        reset), or None when it stated none.
        """
        stated = parse_retry_after(headers.get("Retry-After"), self.wall_clock())
        if stated is None and info.reset is not None:
            stated = info.reset
        if stated is not None:
            self.gate.close_until(self.clock() + stated)
        elif self.learning:
            # Only a 429 that says nothing teaches a rate: a stated wait is honoured at the
            # shared gate, and a lone throttle must not pin the client to its measured ~1/s.
            self.adaptive.on_throttle(sent_at)
        return stated

    async def share_throttle(self, stated: float | None, max_wait: float) -> None:
        """Tell a shared limiter about a 429, so every process of the fleet pauses or slows.

        A stated wait above ``max_wait`` is not shared: this call raises ``RateLimitError``
        rather than wait, and other processes must not be put to sleep that long either.
        """
        if self.shared is not None and (stated is None or stated <= max_wait):
            await self.shared.on_throttle(stated)

    def release_probe(self) -> None:
        """Let waiting calls go when the first request failed without any response."""
        if self._probe is not None and not self._probe.is_set():
            self._probe.set()


def _has_rate_headers(headers: Mapping[str, str]) -> bool:
    return (
        "RateLimit" in headers
        or "RateLimit-Remaining" in headers
        or "RateLimit-Limit" in headers
        or "X-RateLimit-Remaining" in headers
        or "X-RateLimit-Limit" in headers
        or "RateLimit-Policy" in headers
        or "RateLimit-Reset" in headers
        or "X-RateLimit-Reset" in headers
    )
