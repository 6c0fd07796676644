"""Rate-limit primitives: pure, clock-driven building blocks the client composes.

Every object here takes its time source as arguments (``clock``: monotonic seconds, default
:func:`time.monotonic`; ``sleep``: an awaitable sleep, default :func:`asyncio.sleep`), so
tests drive time exactly and nothing here reads the wall clock or sleeps on its own.

- :class:`RateLimiter`: the protocol a client-side limiter satisfies (``async acquire()``).
- :class:`TokenBucket`: an in-process limiter with FIFO waiters and a safety margin.
- :class:`RateLimitGate`: the shared "resume at" gate that 429 answers close.
- :class:`AdaptiveRateLimiter`: learns a tenant's limit from 429s when nothing announces it.
- :class:`RetryBudget`: gRPC-style retry throttling, so an outage does not multiply traffic.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol, runtime_checkable

import attrs

from monocloud_async.errors import ConfigurationError

__all__ = [
    "AdaptiveRateLimiter",
    "RateLimitGate",
    "RateLimiter",
    "RetryBudget",
    "TokenBucket",
]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: Default burst of a :class:`TokenBucket`, in seconds' worth of its rate (never below 1).
DEFAULT_BURST_SECONDS: Final = 0.05
#: Share of the burst a :class:`TokenBucket` may hold, and so release at once.
BURST_MARGIN: Final = 0.5
#: Largest random delay a :class:`RateLimitGate` adds when it reopens, in seconds ...
GATE_SPREAD_MAX: Final = 0.05
#: ... and as a share of how long the waiter waited (the smaller of the two applies).
GATE_SPREAD_SHARE: Final = 0.1

# AdaptiveRateLimiter, tuned with the simulation in tests/test_ratelimit.py:
#: Share of the rate kept by a cut.
CUT_FACTOR: Final = 0.8
#: Throttles of requests sent up to this many round trips after a cut belong to its event.
EVENT_ROUND_TRIPS: Final = 2.0
#: Seconds the increase takes to climb back from a cut to the rate cut from (the plateau).
RECOVERY_SECONDS: Final = 1.0
#: Steepness of the probing above the plateau, relative to it, per second cubed.
PROBE_SCALE: Final = 0.08
#: Past this multiple of the plateau without a throttle, the limit has risen: grow faster, ...
BREAKOUT: Final = 1.15
#: ... doubling every this many seconds (also the growth of slow start).
DOUBLING_SECONDS: Final = 0.35
#: A learned rate never exceeds this multiple of the measured send rate.
SEND_RATE_CAP: Final = 1.5
#: Seconds of sending history behind the measured send rate.
SEND_WINDOW: Final = 1.0
#: Rate of the start ramp: pacing from the first answer on, instead of an unlimited burst, ...
STARTUP_RATE: Final = 1000.0
#: ... doubling every this many seconds, ...
STARTUP_DOUBLING: Final = 0.1
#: ... and unlimited again this many seconds after the first answer, when nothing throttled.
STARTUP_SECONDS: Final = 0.6
#: Shortest span the measured send rate is taken over, in seconds.
MIN_SPAN: Final = 0.1
#: Smallest relative rise worth re-planning a waiting :class:`TokenBucket` for.
REPLAN_STEP: Final = 1.01

# A token is "there" when it is at most this many seconds away: event loops fire timers up
# to their clock resolution early, and float rounding does the rest; neither may cost a
# second, tiny sleep.
_EARLY: Final = 1e-6


def _rate_value(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise ConfigurationError unless finite and above 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ConfigurationError(f"{name} must be a finite number above 0, got {value!r}")
    return number


def burst_for(rate: float, burst: float | None) -> float:
    """The burst in force: ``burst`` as given, else ``max(1, rate * DEFAULT_BURST_SECONDS)``."""
    if burst is not None:
        return burst
    return max(1.0, rate * DEFAULT_BURST_SECONDS)


def spendable(burst: float) -> float:
    """How much of a burst a limiter lets go at once: ``BURST_MARGIN`` of it, at least one."""
    return max(1.0, burst * BURST_MARGIN)


def _rng_or_default(rng: random.Random | None) -> random.Random:
    return random.Random() if rng is None else rng  # noqa: S311 (jitter, not cryptography)


@runtime_checkable
class RateLimiter(Protocol):
    """Anything that paces requests: ``await limiter.acquire()`` before each one is sent."""

    async def acquire(self) -> None:
        """Wait until one more request may be sent, and account for it."""
        ...


@attrs.define(eq=False, repr=False)
class TokenBucket:
    """An in-process token bucket: at most ``rate`` requests per second, FIFO.

    Tokens accrue at ``rate`` per second; each :meth:`acquire` takes one, waiting (one timed
    sleep, never polling) when none is left. Waiters are served strictly in arrival order, so
    no caller starves however many wait; a waiter cancelled while waiting takes nothing and
    the next one inherits its place in time.

    Safety margin: requests reach a server with jitter, so a client paced exactly at the
    server's limit still meets 429s (and then whole-second ``Retry-After`` pauses) if it also
    spends its whole burst at once. This bucket therefore holds at most half of ``burst``
    (but at least the one token a request needs), starts with that much, and so never lets
    more than half the burst out back to back: configured at exactly a server's rate and
    burst, it leaves half the server's burst free to absorb jitter.

    Args:
        rate: Requests per second; finite and above 0.
        burst: Largest number of requests the server accepts back to back; at least 1.
            Default ``max(1, rate * 0.05)``: a twentieth of a second's worth, recomputed when
            the rate changes. Half of it can go out at once (see above).
        clock: Monotonic time in seconds.
        sleep: Awaitable sleep, in the same seconds as ``clock``.

    Raises:
        ConfigurationError: ``rate`` or ``burst`` is out of range.
    """

    _rate: float = attrs.field()
    _burst_setting: float | None = attrs.field(default=None, alias="burst")
    _clock: Clock = attrs.field(default=time.monotonic, kw_only=True)
    _sleep: Sleep = attrs.field(default=asyncio.sleep, kw_only=True)
    _tokens: float = attrs.field(init=False, default=0.0)
    _updated_at: float = attrs.field(init=False, default=0.0)
    _waiters: collections.deque[asyncio.Future[None]] = attrs.field(
        init=False, factory=collections.deque
    )
    _rate_changed: asyncio.Future[None] | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        """Validate the rate and burst, and fill the bucket to its margin."""
        self._rate = _rate_value("rate", self._rate)
        if self._burst_setting is not None:
            burst = _rate_value("burst", self._burst_setting)
            if burst < 1:  # a request needs a whole token
                raise ConfigurationError(f"burst must be at least 1, got {burst!r}")
            self._burst_setting = burst
        self._tokens = self._capacity
        self._updated_at = self._clock()

    def __repr__(self) -> str:
        """Show the rate and burst."""
        return f"TokenBucket(rate={self._rate!r}, burst={self.burst!r})"

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self._rate

    @property
    def burst(self) -> float:
        """The burst: as given, else ``max(1, rate * 0.05)`` for the current rate."""
        return burst_for(self._rate, self._burst_setting)

    @property
    def _capacity(self) -> float:
        return spendable(self.burst)

    def set_rate(self, rate: float, burst: float | None = None) -> None:
        """Change the rate from now on; tokens accrued so far are kept (up to the capacity).

        A waiter asleep for its token re-plans at once, so a higher rate takes effect without
        waiting out a sleep planned at the old one.

        Args:
            rate: Requests per second; finite and above 0.
            burst: A new burst (at least 1); None keeps the current setting.

        Raises:
            ConfigurationError: ``rate`` or ``burst`` is out of range.
        """
        rate = _rate_value("rate", rate)
        if burst is not None:
            burst = _rate_value("burst", burst)
            if burst < 1:
                raise ConfigurationError(f"burst must be at least 1, got {burst!r}")
        self._refill()
        self._rate = rate
        if burst is not None:
            self._burst_setting = burst
        self._tokens = min(self._tokens, self._capacity)
        if self._rate_changed is not None:
            _resolve(self._rate_changed)

    async def acquire(self) -> None:
        """Wait for a token, in arrival order, and take it.

        Cancelling a waiter takes nothing from the bucket and delays nobody behind it.
        """
        if not self._waiters and self._take():
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            if self._waiters[0] is not turn:
                await turn  # resolved by the waiter ahead when it leaves the queue
            while not self._take():
                await self._nap((1.0 - self._tokens) / self._rate)
        finally:
            if self._waiters[0] is turn:
                self._waiters.popleft()
            else:
                self._waiters.remove(turn)
            if self._waiters:
                _resolve(self._waiters[0])

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._updated_at
        if elapsed > 0:
            self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
        self._updated_at = now

    def _take(self) -> bool:
        self._refill()
        if self._tokens >= 1.0 - _EARLY * self._rate:
            self._tokens -= 1.0
            return True
        return False

    async def _nap(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if :meth:`set_rate` is called meanwhile."""
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        nap = asyncio.ensure_future(self._sleep(seconds))
        nap.add_done_callback(functools.partial(_resolve, woken))
        self._rate_changed = woken
        try:
            await woken
        finally:
            self._rate_changed = None
            nap.cancel()
        if nap.done() and not nap.cancelled():
            nap.result()  # surface a failing sleep instead of losing it


def _resolve(future: asyncio.Future[None], _: object = None) -> None:
    if not future.done():
        future.set_result(None)


@attrs.define(eq=False, repr=False)
class RateLimitGate:
    """The shared "resume at" gate: while it is closed, nobody sends.

    A 429 (or a ``remaining: 0`` answer) closes the gate until the server's stated time;
    every call of the client waits at the gate before sending, so one throttled call pauses
    them all instead of each meeting its own 429.

    When the gate reopens, each waiter that had to wait resumes after a small random delay of
    up to ``min(0.05 s, 10% of the time it waited)``, so the waiters do not all hit the
    server in the same instant (a stampede that would meet the next 429).

    Args:
        clock: Monotonic time in seconds.
        sleep: Awaitable sleep, in the same seconds as ``clock``.
        rng: Source of the reopening spread; a private ``random.Random()`` by default.
    """

    _clock: Clock = time.monotonic
    _sleep: Sleep = asyncio.sleep
    _rng: random.Random = attrs.field(default=None, converter=_rng_or_default)
    _resume_at: float = attrs.field(init=False, default=-math.inf)

    def __repr__(self) -> str:
        """Show whether the gate is open, and for how long it stays closed."""
        wait = self.wait_time()
        return "RateLimitGate(open)" if wait <= 0 else f"RateLimitGate(closed, {wait:.3f}s left)"

    @property
    def is_open(self) -> bool:
        """Whether a request may go out now."""
        return self.wait_time() <= 0

    def close_until(self, resume_at: float) -> None:
        """Keep the gate closed until ``resume_at`` (a ``clock`` time).

        The gate only ever extends: a time earlier than the current one is ignored.
        """
        self._resume_at = max(self._resume_at, resume_at)

    def wait_time(self) -> float:
        """Seconds until the gate opens; 0 when it is open."""
        return max(0.0, self._resume_at - self._clock())

    async def wait(self) -> None:
        """Return when the gate is open; at once if it is open now.

        A gate extended while waiting is waited out too. A waiter that had to wait adds its
        random spread (see the class) before returning, and re-checks the gate afterwards.
        """
        started = self._clock()
        while (remaining := self.wait_time()) > 0:
            await self._sleep(remaining)
            if self.wait_time() <= 0:
                waited = self._clock() - started
                spread = self._rng.uniform(0.0, min(GATE_SPREAD_MAX, GATE_SPREAD_SHARE * waited))
                if spread > 0:
                    await self._sleep(spread)


@attrs.define(eq=False, repr=False)
class AdaptiveRateLimiter:
    """A limiter that learns the tenant's rate limit from throttling (429s).

    For when nothing announces the limit (no configured rate, no rate-limit headers). It paces
    requests with a :class:`TokenBucket` whose rate it adjusts:

    - **Start ramp.** Until the first answer it lets requests through unlimited (the client
      sends its first request alone). From the first success on, it paces at
      ``STARTUP_RATE`` (1,000/s, burst 1), doubling every ``STARTUP_DOUBLING`` (0.1 s), and
      drops the pacing ``STARTUP_SECONDS`` (0.6 s, 64,000/s) later if nothing was
      throttled: an unlimited start sends a whole concurrency's worth at once, into a burst
      that is often smaller (64, in fact 128 pending items, into a burst of 30 met about a
      hundred 429s in the benchmark), while the ramp reaches that concurrency within a
      fraction of a second. :attr:`rate` stays None during the ramp: nothing is learned yet.
    - **One cut per congestion event.** :meth:`on_throttle` multiplies the rate by ``CUT_FACTOR``
      (0.8), starting from the lower of the rate in force and the send rate measured over the last
      ``SEND_WINDOW`` (1 s); the first cut (which ends the ramp) starts from the measured send rate.
      A throttle for a request sent before the last cut belongs to the same event and is ignored. So
      is one sent within ``EVENT_ROUND_TRIPS`` (2) round trips after it (the round trip of the
      request that caused the cut): until the requests from before the cut have all arrived, the
      server's bucket is still empty and later requests meet that old congestion, and a second cut
      for it would leave the rate far below the limit. The AWS SDKs cut on every throttled response;
      with many requests in flight that compounds into a fraction of the real limit (a third of it
      in the simulation). Like TCP, this cuts at most once per round trip of evidence.
    - **CUBIC increase.** :meth:`on_success` raises the rate along a cubic curve, as TCP
      CUBIC and the AWS SDKs' adaptive mode do, around the *plateau*, the rate the last cut
      started from: back up to it in ``RECOVERY_SECONDS`` (1 s; concave, so fast at first),
      nearly flat around it, then probing above it ever faster:
      ``plateau * (1 + PROBE_SCALE * t**3)``, ``t`` seconds past the plateau, with
      ``PROBE_SCALE`` 0.08 (+1% after 0.5 s, +8% after 1 s). The curve is relative to the
      plateau, so its timing does not depend on the size of the limit. Chosen over AIMD
      because a straight line either climbs back slowly (a long stretch well under the
      limit) or probes steeply (many 429s per probe); the cubic spends most of its time just
      under the learned limit, overshoots it slowly enough that the server's burst absorbs
      most of the overshoot (a probe ends with one to five 429s), and still accelerates to
      find a raised limit within seconds.
    - **Breakout and slow start.** Past ``BREAKOUT`` (1.15) times the plateau without a
      throttle, the limit has evidently risen: the rate then doubles every
      ``DOUBLING_SECONDS`` (0.35 s) until the next throttle. After the first cut no plateau
      is known yet (the unlimited burst's send rate says little about the limit), so the
      rate grows that way from the start (TCP's "slow start").
    - **Never far ahead of use.** The rate never rises above ``SEND_RATE_CAP`` (1.5) times
      the measured send rate (for a limiter younger than ``SEND_WINDOW``, the sends divided
      by its age, at least ``MIN_SPAN`` 0.1 s, so slow start after an early cut is not held
      back by the empty part of the window), so a client that idles or is held back by its
      concurrency does not "learn" a rate it never tried. Rises under 1% do not re-plan the bucket.

    Measured with the simulation in ``tests/test_ratelimit.py``: a server token bucket of
    limit L = 500/s (burst L/10), no rate headers, 64 concurrent senders, round trips of 30
    to 70 ms. Over 50 s the limiter gets 0.99 L with 0.30% of requests throttled (74 of
    24,800; 15 of them in the first 3 s, the start and the end of slow start; 0.24% from
    10 s on). With round trips of 2 to 5 ms, L = 300/s and the client's probe and backoff,
    0.3% of a 20 s run is throttled from the start (0.9% with an unlimited start).
    When L halves, 0.4% are throttled from one second after the drop; when it is restored,
    the rate is back at 0.9 L within 1.5 s (2.4 s at worst over three seeds; it depends on
    the phase of the probing cycle). Cutting on every 429 instead gets 0.34 L.

    Args:
        clock: Monotonic time in seconds.
        sleep: Awaitable sleep, in the same seconds as ``clock``.
        min_rate: The rate is never cut below this many requests per second.

    Raises:
        ConfigurationError: ``min_rate`` is out of range.
    """

    _clock: Clock = time.monotonic
    _sleep: Sleep = asyncio.sleep
    _min_rate: float = attrs.field(default=1.0, kw_only=True)
    _bucket: TokenBucket | None = attrs.field(init=False, default=None)
    _sent: collections.deque[float] = attrs.field(init=False, factory=collections.deque)
    _event_end: float = attrs.field(init=False, default=-math.inf)
    _plateau: float = attrs.field(init=False, default=math.inf)
    _epoch: float = attrs.field(init=False, default=0.0)
    _start: float = attrs.field(init=False, default=0.0)
    _ramp: float | None = attrs.field(init=False, default=None)
    _learned: bool = attrs.field(init=False, default=False)
    _born: float = attrs.field(init=False, default=0.0)

    def __attrs_post_init__(self) -> None:
        """Validate ``min_rate``."""
        self._min_rate = _rate_value("min_rate", self._min_rate)
        self._born = self._clock()

    def __repr__(self) -> str:
        """Show the current rate (None: unlimited)."""
        return f"AdaptiveRateLimiter(rate={self.rate!r})"

    @property
    def rate(self) -> float | None:
        """The learned (or set) rate in requests per second; None while none is known.

        None also during the start ramp: its pace is a precaution, not a learned rate.
        """
        return None if self._bucket is None or not self._learned else self._bucket.rate

    def measured_rate(self) -> float:
        """Requests sent per second over the last ``SEND_WINDOW`` seconds."""
        self._forget_before(self._clock())
        return len(self._sent) / SEND_WINDOW

    def _recent_rate(self) -> float:
        # The send rate for the cap on rises: a limiter younger than the window has not sent
        # for a whole window, so its count is divided by its age (at least ``MIN_SPAN``).
        now = self._clock()
        self._forget_before(now)
        return len(self._sent) / min(SEND_WINDOW, max(now - self._born, MIN_SPAN))

    async def acquire(self) -> None:
        """Wait until the learned rate allows one more request (at once while unlimited)."""
        if self._bucket is not None:
            await self._bucket.acquire()
        self._note_send()

    def acquire_nowait(self) -> bool:
        """Take the next send at once if no rate is in force; False means ``await acquire()``.

        Saves the hot path a coroutine per request while the rate is unlimited.
        """
        if self._bucket is not None:
            return False
        self._note_send()
        return True

    def _note_send(self) -> None:
        now = self._clock()
        self._sent.append(now)
        self._forget_before(now)

    def set_rate(self, rate: float, burst: float | None = None) -> None:
        """Pace at ``rate`` from now on, and take it as the plateau of the increase curve.

        For a rate announced by the server: the rate stays near it, and only probes above it
        after a while (as it would after a cut). ``burst``, when the server announced one,
        sizes the pacing bucket (of which half may go at once), so a short stall of the event
        loop does not cost throughput.

        Raises:
            ConfigurationError: ``rate`` or ``burst`` is out of range.
        """
        rate = _rate_value("rate", rate)
        self._learned = True
        self._ramp = None
        self._plateau = self._start = rate
        self._epoch = self._clock() - RECOVERY_SECONDS
        self._apply(rate, burst)

    def on_throttle(self, sent_at: float) -> None:
        """Account for a throttled (429) request sent at ``sent_at`` (a ``clock`` time).

        Cuts the rate, unless the request belongs to the congestion event of the last cut.
        """
        if sent_at <= self._event_end:
            return
        now = self._clock()
        round_trip = min(max(now - sent_at, 0.0), SEND_WINDOW)
        self._event_end = now + EVENT_ROUND_TRIPS * round_trip
        base = self.measured_rate()
        if self._bucket is not None and (base <= 0 or self._bucket.rate < base):
            base = self._bucket.rate
        base = max(base, self._min_rate)
        # The first cut ends an unlimited burst: its send rate says little about the limit,
        # so no plateau is known yet and the increase starts in slow start.
        self._plateau = base if self._learned else math.inf
        if not self._learned and self._bucket is not None:
            # The ramp paced with a burst of 1; the learned rate keeps the default burst.
            self._bucket._burst_setting = None  # noqa: SLF001 (same module)
        self._learned = True
        self._ramp = None
        self._start = max(base * CUT_FACTOR, self._min_rate)
        self._epoch = now
        self._apply(self._start)

    def on_success(self) -> None:
        """Account for a request that was not throttled: raise the rate along the curve."""
        if not self._learned:
            self._ramp_up()
            return
        if self._bucket is None:
            return
        rate = self._bucket.rate
        target = min(
            _increase(self._plateau, self._start, self._clock() - self._epoch),
            SEND_RATE_CAP * self._recent_rate(),
        )
        # Re-planning the bucket's sleeper on every success would cost more than it gains.
        if target > rate * REPLAN_STEP:
            self._bucket.set_rate(target)

    def _ramp_up(self) -> None:
        now = self._clock()
        if self._ramp is None:
            self._ramp = now
            self._bucket = TokenBucket(STARTUP_RATE, 1.0, clock=self._clock, sleep=self._sleep)
            return
        if self._bucket is None:
            return  # the ramp is over: unlimited until a throttle
        elapsed = now - self._ramp
        if elapsed >= STARTUP_SECONDS:
            self._bucket.set_rate(1e9)
            self._bucket = None
            self._ramp = -math.inf
            return
        target = STARTUP_RATE * math.exp2(elapsed / STARTUP_DOUBLING)
        if target > self._bucket.rate * REPLAN_STEP:
            self._bucket.set_rate(target)

    def _apply(self, rate: float, burst: float | None = None) -> None:
        if self._bucket is None:
            self._bucket = TokenBucket(rate, burst, clock=self._clock, sleep=self._sleep)
        else:
            self._bucket.set_rate(rate, burst)

    def _forget_before(self, now: float) -> None:
        horizon = now - SEND_WINDOW
        sent = self._sent
        while sent and sent[0] <= horizon:
            sent.popleft()


def _increase(plateau: float, start: float, elapsed: float) -> float:
    """The rate ``elapsed`` s after a cut from ``plateau`` to ``start`` (inf: slow start)."""
    if math.isinf(plateau):
        return start * math.exp2(elapsed / DOUBLING_SECONDS)
    past = elapsed - RECOVERY_SECONDS
    if past < 0:
        return plateau * (1.0 - (1.0 - CUT_FACTOR) * (-past / RECOVERY_SECONDS) ** 3)
    target = plateau * (1.0 + PROBE_SCALE * past**3)
    breakout_at = math.cbrt((BREAKOUT - 1.0) / PROBE_SCALE)
    if past > breakout_at:
        target = max(
            target, plateau * BREAKOUT * math.exp2((past - breakout_at) / DOUBLING_SECONDS)
        )
    return target


@attrs.define(eq=False, repr=False)
class RetryBudget:
    """Client-wide retry throttling in the style of gRPC's ``retryThrottling``.

    The budget holds up to ``max_tokens`` tokens and starts full. Every failed attempt spends
    one token, every success refills ``token_ratio``; retries are allowed only while more
    than half the tokens are left. Counting is in thousandths, as gRPC does, so the
    arithmetic is exact.

    With the defaults (100 tokens, 0.1 per success) and a total outage, about 50 failures
    drain the budget to half, after which each call makes a single attempt: over 2,000 calls
    of 4 attempts at most that is 2,037 attempts (1.02 per call) instead of 8,000. Once calls
    succeed again, 501 successes refill the budget above half and retries resume by
    themselves.

    Args:
        max_tokens: Size of the budget; finite and above 0.
        token_ratio: Tokens refilled per success; finite and above 0.

    Raises:
        ConfigurationError: A parameter is out of range.
    """

    _max_tokens: float = 100.0
    _token_ratio: float = 0.1
    _milli_max: int = attrs.field(init=False, default=0)
    _milli_ratio: int = attrs.field(init=False, default=0)
    _milli_tokens: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        """Validate the parameters and start with a full budget."""
        self._max_tokens = _rate_value("max_tokens", self._max_tokens)
        self._token_ratio = _rate_value("token_ratio", self._token_ratio)
        self._milli_max = round(self._max_tokens * 1000)
        self._milli_ratio = max(1, round(self._token_ratio * 1000))
        self._milli_tokens = self._milli_max

    def __repr__(self) -> str:
        """Show the tokens left."""
        return f"RetryBudget(tokens={self.tokens:g}/{self._max_tokens:g})"

    @property
    def tokens(self) -> float:
        """Tokens left."""
        return self._milli_tokens / 1000

    def can_retry(self) -> bool:
        """Whether a failed attempt may be retried: more than half the tokens are left."""
        return 2 * self._milli_tokens > self._milli_max

    def on_failure(self) -> None:
        """Spend one token for a failed attempt (never below zero)."""
        self._milli_tokens = max(0, self._milli_tokens - 1000)

    def on_success(self) -> None:
        """Refill ``token_ratio`` tokens for a success (never above ``max_tokens``)."""
        self._milli_tokens = min(self._milli_max, self._milli_tokens + self._milli_ratio)
