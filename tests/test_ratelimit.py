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
    CUT_FACTOR,
    AdaptiveRateLimiter,
    RateLimiter,
    RateLimitGate,
    RetryBudget,
    TokenBucket,
    _increase,
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
    # pytest-asyncio owns the loop (a custom loop would need a conftest hook), so its clock
    # and its selector's wait are patched for this test only: whenever the loop would block
    # until its next timer, virtual time jumps there instead.
    loop = asyncio.get_running_loop()
    clock = VirtualClock(now=loop.time())
    selector = loop._selector  # type: ignore[attr-defined]
    real_select = selector.select

    def select(timeout: float | None = None) -> list[Any]:
        if timeout == 0:
            return []  # callbacks are ready; I/O (there is none) can wait until idle
        events = real_select(0)
        if events:
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
    probe: bool = False,
    backoff: float = 0.0,
) -> SimResult:
    """Run ``concurrency`` senders for ``duration`` s against a throttling server.

    Each sender loops: ``acquire()``, a one-way trip of 30 to 70% of ``latency`` to the
    server, which admits or throttles it (its bucket's limit follows ``limits``, pairs of
    (offset, limit)), the trip back, then ``on_success()`` or ``on_throttle(sent_at)``; a
    throttled request is simply sent again. Times in the result are offsets from the start.

    As the client does, ``probe`` sends the first request alone (the others wait for its
    answer), and ``backoff`` makes a throttled sender wait a random 0 to ``backoff`` seconds
    before sending again.
    """
    rng = random.Random(seed)
    start = clock()
    server = SimServer(clock, limits[0][1])
    result = SimResult()
    probed = asyncio.Event()
    if not probe:
        probed.set()
    probing = False

    def arrive(verdict: asyncio.Future[bool]) -> None:
        admitted = server.admit()
        (result.admitted if admitted else result.throttled).append(clock() - start)
        verdict.set_result(admitted)

    async def sender() -> None:
        nonlocal probing
        loop = asyncio.get_running_loop()
        while True:
            if not probed.is_set():
                if probing:
                    await probed.wait()
                probing = True
            await limiter.acquire()
            sent_at = clock()
            there, back = (latency * rng.uniform(0.3, 0.7) for _ in range(2))
            verdict: asyncio.Future[bool] = loop.create_future()
            loop.call_later(there, arrive, verdict)  # the server decides on arrival
            await asyncio.sleep(there + back)
            probed.set()
            if verdict.result():
                limiter.on_success()
            else:
                limiter.on_throttle(sent_at)
                if backoff:
                    await asyncio.sleep(rng.uniform(0, backoff))

    async def operator() -> None:
        for at, limit in limits[1:]:
            await asyncio.sleep(start + at - clock())
            server.set_limit(limit)

    tasks = [asyncio.create_task(sender()) for _ in range(concurrency)]
    tasks.append(asyncio.create_task(operator()))
    await asyncio.sleep(duration)
    await _cancel(*tasks)
    return result


def _approx(expected: Any) -> Any:
    return pytest.approx(expected, rel=1e-9, abs=1e-9)


class _HighRandom(random.Random):
    """Always draws the top of the range."""

    def uniform(self, a: float, b: float) -> float:
        return b


class _LowRandom(random.Random):
    """Always draws the bottom of the range."""

    def uniform(self, a: float, b: float) -> float:
        return a


async def _acquire_at(clock: VirtualClock, limiter: RateLimiter, t0: float) -> float:
    await limiter.acquire()
    return clock() - t0


async def _wait_at(clock: VirtualClock, gate: RateLimitGate, t0: float) -> float:
    await gate.wait()
    return clock() - t0


async def _send_steadily(clock: VirtualClock, limiter: AdaptiveRateLimiter, per_second: int):
    """Acquire ``per_second`` times over the next second, evenly."""
    for _ in range(per_second):
        await clock.advance(1 / per_second)
        await limiter.acquire()


class TestTokenBucket:
    @pytest.mark.parametrize(
        ("rate", "expected"), [(100.0, 5.0), (1000.0, 50.0), (10.0, 1.0)], ids=str
    )
    def test_default_burst(self, rate, expected):
        """The default burst is a twentieth of a second's worth, and at least 1."""
        assert expected == TokenBucket(rate).burst

    @pytest.mark.asyncio
    async def test_spends_half_the_burst_then_paces(self, vclock):
        """A fresh bucket lets half its burst through at once, then one per 1/rate."""
        bucket = TokenBucket(10, burst=4, clock=vclock, sleep=vclock.sleep)
        t0 = vclock()

        times = [await _acquire_at(vclock, bucket, t0) for _ in range(5)]

        assert _approx([0.0, 0.0, 0.1, 0.2, 0.3]) == times

    @pytest.mark.asyncio
    async def test_each_wait_is_one_exact_sleep(self, vclock):
        """Waiting for a token is one sleep of exactly the missing time, never a poll."""
        bucket = TokenBucket(4, clock=vclock, sleep=vclock.sleep)

        for _ in range(5):
            await bucket.acquire()

        assert _approx([0.25] * 4) == vclock.sleeps

    @pytest.mark.asyncio
    async def test_idle_bucket_holds_only_half_the_burst(self, vclock):
        """However long it idles, the bucket never releases more than half its burst at once."""
        bucket = TokenBucket(100, burst=10, clock=vclock, sleep=vclock.sleep)
        await vclock.advance(60)
        t0 = vclock()

        times = [await _acquire_at(vclock, bucket, t0) for _ in range(7)]

        assert _approx([0.0] * 5 + [0.01, 0.02]) == times

    @pytest.mark.asyncio
    async def test_long_run_keeps_the_rate(self, vclock):
        """Over many requests the bucket sends exactly at its rate after the initial tokens."""
        bucket = TokenBucket(50, burst=10, clock=vclock, sleep=vclock.sleep)
        t0 = vclock()

        for _ in range(505):
            await bucket.acquire()

        assert _approx((505 - 5) / 50) == vclock() - t0

    @pytest.mark.asyncio
    async def test_concurrent_acquirers_are_served_in_arrival_order(self, vclock):
        """Many concurrent waiters, including late ones, get tokens first come, first served."""
        bucket = TokenBucket(1000, burst=2, clock=vclock, sleep=vclock.sleep)
        served: list[int] = []
        t0 = vclock()

        async def client(number: int) -> float:
            await bucket.acquire()
            served.append(number)
            return vclock() - t0

        early = [asyncio.create_task(client(n)) for n in range(150)]
        await vclock.advance(0.0505)  # 51 served; the rest still queued
        late = [asyncio.create_task(client(n)) for n in range(150, 300)]
        times = await asyncio.gather(*early, *late)

        assert list(range(300)) == served
        assert _approx([k / 1000 for k in range(300)]) == times

    @pytest.mark.asyncio
    async def test_newcomer_does_not_take_a_token_ahead_of_waiters(self, vclock):
        """A caller arriving just as a token accrues queues behind those already waiting."""
        bucket = TokenBucket(10, clock=vclock, sleep=vclock.sleep)
        t0 = vclock()
        await bucket.acquire()
        served: list[str] = []

        async def client(name: str, arrive_at: float) -> float:
            await asyncio.sleep(arrive_at)
            await bucket.acquire()
            served.append(name)
            return vclock() - t0

        waiting = [asyncio.create_task(client(name, 0.0)) for name in ("a", "b")]
        await asyncio.sleep(0)  # both queued; "a" sleeps until its token at t0 + 0.1
        newcomer = asyncio.create_task(client("c", 0.1))  # arrives as that token accrues

        times = await asyncio.gather(*waiting, newcomer)

        assert (["a", "b", "c"], _approx([0.1, 0.2, 0.3])) == (served, times)

    @pytest.mark.asyncio
    async def test_cancelled_sleeping_waiter_takes_nothing(self, vclock):
        """Cancelling the waiter asleep for the next token hands that token to the next one."""
        bucket = TokenBucket(10, clock=vclock, sleep=vclock.sleep)
        t0 = vclock()
        await bucket.acquire()
        first = asyncio.create_task(_acquire_at(vclock, bucket, t0))
        second = asyncio.create_task(_acquire_at(vclock, bucket, t0))
        third = asyncio.create_task(_acquire_at(vclock, bucket, t0))
        await vclock.advance(0.05)

        first.cancel()

        assert _approx([0.1, 0.2]) == await asyncio.gather(second, third)
        assert first.cancelled()

    @pytest.mark.asyncio
    async def test_cancelled_queued_waiter_delays_nobody(self, vclock):
        """Cancelling a waiter further back in the queue keeps everyone's timing."""
        bucket = TokenBucket(10, clock=vclock, sleep=vclock.sleep)
        t0 = vclock()
        await bucket.acquire()
        tasks = [asyncio.create_task(_acquire_at(vclock, bucket, t0)) for _ in range(4)]
        await vclock.advance(0.05)

        tasks[1].cancel()
        tasks[2].cancel()

        assert _approx([0.1, 0.2]) == await asyncio.gather(tasks[0], tasks[3])

    @pytest.mark.asyncio
    async def test_higher_rate_wakes_the_sleeping_waiter(self, vclock):
        """Raising the rate re-plans a waiter already asleep at the old rate."""
        bucket = TokenBucket(1, clock=vclock, sleep=vclock.sleep)
        t0 = vclock()
        await bucket.acquire()
        waiter = asyncio.create_task(_acquire_at(vclock, bucket, t0))
        await vclock.advance(0.1)  # 0.1 token accrued at 1/s

        bucket.set_rate(10)

        assert _approx(0.1 + 0.9 / 10) == await waiter
        assert 10.0 == bucket.rate

    @pytest.mark.asyncio
    async def test_lower_rate_slows_the_sleeping_waiter(self, vclock):
        """Lowering the rate makes a waiter wait for the rest of its token at the new rate."""
        bucket = TokenBucket(10, clock=vclock, sleep=vclock.sleep)
        t0 = vclock()
        await bucket.acquire()
        waiter = asyncio.create_task(_acquire_at(vclock, bucket, t0))
        await vclock.advance(0.05)  # half a token accrued at 10/s

        bucket.set_rate(1)

        assert _approx(0.05 + 0.5 / 1) == await waiter

    def test_set_rate_rescales_only_a_default_burst(self):
        """A default burst follows the rate; a burst given explicitly stays."""
        default = TokenBucket(100)
        explicit = TokenBucket(100, burst=3)

        default.set_rate(400)
        explicit.set_rate(400)

        assert (20.0, 3.0) == (default.burst, explicit.burst)

    @pytest.mark.parametrize("rate", [0, -1.0, math.nan, math.inf, "10", True, None], ids=repr)
    def test_rejects_invalid_rate(self, rate):
        """A rate that is not a positive finite number is a ConfigurationError."""
        with pytest.raises(ConfigurationError, match="rate"):
            TokenBucket(rate)

    @pytest.mark.parametrize("burst", [0.5, 0, -2.0, math.nan, math.inf, "5"], ids=repr)
    def test_rejects_invalid_burst(self, burst):
        """A burst below 1, infinite or not a number is a ConfigurationError."""
        with pytest.raises(ConfigurationError, match="burst"):
            TokenBucket(10, burst)

    def test_set_rate_rejects_invalid_rate_and_keeps_the_old_one(self):
        """set_rate validates like the constructor and changes nothing on error."""
        bucket = TokenBucket(10)

        with pytest.raises(ConfigurationError):
            bucket.set_rate(0)

        assert 10.0 == bucket.rate

    def test_is_a_rate_limiter_with_a_short_repr(self):
        """The bucket satisfies the RateLimiter protocol and shows its settings."""
        bucket = TokenBucket(20, burst=4)

        assert isinstance(bucket, RateLimiter)
        assert "TokenBucket(rate=20.0, burst=4.0)" == repr(bucket)


class TestRateLimitGate:
    @pytest.mark.asyncio
    async def test_open_gate_does_not_wait(self, vclock):
        """A gate never closed is open: no wait, no sleep."""
        gate = RateLimitGate(vclock, vclock.sleep)
        t0 = vclock()

        await gate.wait()

        assert (True, 0.0, [], t0) == (gate.is_open, gate.wait_time(), vclock.sleeps, vclock())

    def test_close_until_only_extends(self, vclock):
        """An earlier resume time never shortens the gate; a later one extends it."""
        gate = RateLimitGate(vclock, vclock.sleep)
        t0 = vclock()

        gate.close_until(t0 + 2)
        gate.close_until(t0 + 1)
        shortened = gate.wait_time()
        gate.close_until(t0 + 3)

        assert (2.0, 3.0, False) == (shortened, gate.wait_time(), gate.is_open)

    @pytest.mark.asyncio
    async def test_wait_time_counts_down_to_open(self, vclock):
        """wait_time falls with the clock and is 0 once the resume time has passed."""
        gate = RateLimitGate(vclock, vclock.sleep)
        gate.close_until(vclock() + 2)

        await vclock.advance(0.5)
        halfway = gate.wait_time()
        await vclock.advance(2)

        assert (_approx(1.5), 0.0, True) == (halfway, gate.wait_time(), gate.is_open)

    @pytest.mark.asyncio
    async def test_waiters_share_one_wait(self, vclock):
        """Waiters arriving at different times all resume when the gate opens."""
        gate = RateLimitGate(vclock, vclock.sleep, _LowRandom())
        t0 = vclock()
        gate.close_until(t0 + 1)
        tasks = []
        for _ in range(5):
            tasks.append(asyncio.create_task(_wait_at(vclock, gate, t0)))
            await vclock.advance(0.2)

        assert _approx([1.0] * 5) == await asyncio.gather(*tasks)

    @pytest.mark.asyncio
    @pytest.mark.parametrize(
        ("closed_for", "spread"),
        [(2.0, 0.05), (0.2, 0.02)],
        ids=["long-wait-caps-at-50ms", "short-wait-spreads-10pct"],
    )
    async def test_spread_upper_bound(self, vclock, closed_for, spread):
        """The reopening spread is at most min(50 ms, 10% of the wait)."""
        gate = RateLimitGate(vclock, vclock.sleep, _HighRandom())
        t0 = vclock()
        gate.close_until(t0 + closed_for)

        resumed = await _wait_at(vclock, gate, t0)

        assert _approx(closed_for + spread) == resumed

    @pytest.mark.asyncio
    async def test_waiters_resume_spread_out(self, vclock):
        """Many waiters resume within 50 ms after the gate opens, not all at one instant."""
        gate = RateLimitGate(vclock, vclock.sleep, random.Random(1234))
        t0 = vclock()
        gate.close_until(t0 + 1)

        times = await asyncio.gather(*(_wait_at(vclock, gate, t0) for _ in range(100)))

        assert 1.0 <= min(times)
        assert max(times) <= 1.05
        assert len({round(t, 6) for t in times}) > 90

    @pytest.mark.asyncio
    async def test_extension_while_waiting_is_waited_out(self, vclock):
        """A waiter asleep when the gate is extended waits for the new resume time."""
        gate = RateLimitGate(vclock, vclock.sleep, _LowRandom())
        t0 = vclock()
        gate.close_until(t0 + 1)
        waiter = asyncio.create_task(_wait_at(vclock, gate, t0))
        await vclock.advance(0.5)

        gate.close_until(t0 + 2)

        assert _approx(2.0) == await waiter

    @pytest.mark.asyncio
    async def test_closing_again_during_the_spread_is_waited_out(self, vclock):
        """A gate closed again while a waiter sleeps its spread keeps that waiter waiting."""
        gate = RateLimitGate(vclock, vclock.sleep, _HighRandom())
        t0 = vclock()
        gate.close_until(t0 + 1)
        waiter = asyncio.create_task(_wait_at(vclock, gate, t0))
        await vclock.advance(1.01)  # open, the waiter is in its 50 ms spread

        gate.close_until(t0 + 3)

        assert _approx(3.0 + 0.05) == await waiter

    @pytest.mark.asyncio
    async def test_cancelled_waiter_leaves_the_others_alone(self, vclock):
        """Cancelling one waiter raises in it only; the gate and the other waiter are unchanged."""
        gate = RateLimitGate(vclock, vclock.sleep, _LowRandom())
        t0 = vclock()
        gate.close_until(t0 + 1)
        cancelled = asyncio.create_task(_wait_at(vclock, gate, t0))
        other = asyncio.create_task(_wait_at(vclock, gate, t0))
        await vclock.advance(0.5)

        cancelled.cancel()

        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert _approx(0.5) == gate.wait_time()
        assert _approx(1.0) == await other

    def test_repr_tells_open_from_closed(self, vclock):
        """The repr says whether the gate is open and how long it stays closed."""
        gate = RateLimitGate(vclock, vclock.sleep)
        before = repr(gate)

        gate.close_until(vclock() + 1.25)

        assert ("RateLimitGate(open)", "RateLimitGate(closed, 1.250s left)") == (
            before,
            repr(gate),
        )


class TestAdaptiveRateLimiter:
    @pytest.mark.asyncio
    async def test_unlimited_until_the_first_throttle(self, vclock):
        """Before any throttle the limiter never waits and has no rate."""
        limiter = AdaptiveRateLimiter(vclock, vclock.sleep)
        t0 = vclock()

        for _ in range(1000):
            await limiter.acquire()

        assert (None, t0, []) == (limiter.rate, vclock(), vclock.sleeps)

    @pytest.mark.asyncio
    async def test_first_cut_starts_from_the_measured_send_rate(self, vclock):
        """The first throttle cuts to 0.8 times the send rate of the last second."""
        limiter = AdaptiveRateLimiter(vclock, vclock.sleep)
        await _send_steadily(vclock, limiter, 100)

        limiter.on_throttle(sent_at=vclock() - 0.05)

        assert (_approx(100.0), _approx(80.0)) == (limiter.measured_rate(), limiter.rate)

    @pytest.mark.asyncio
    async def test_cuts_once_per_congestion_event(self, vclock):
        """50 throttles in flight at the cut, and one sent a moment after it, cut just once."""
        limiter = AdaptiveRateLimiter(vclock, vclock.sleep)
        await _send_steadily(vclock, limiter, 100)
        cut_at = vclock()

        limiter.on_throttle(sent_at=cut_at - 0.05)
        for k in range(50):  # in flight when the cut happened
            limiter.on_throttle(sent_at=cut_at - 0.05 + k * 0.001)
        await vclock.advance(0.15)
        for sent_at in (cut_at + 0.03, cut_at + 0.09):  # sent within two round trips of it
            limiter.on_throttle(sent_at=sent_at)

        assert _approx(100.0 * CUT_FACTOR) == limiter.rate

    @pytest.mark.asyncio
    async def test_a_new_event_cuts_from_the_lower_of_rate_and_send_rate(self, vclock):
        """A throttle sent 2 round trips after the cut cuts again, from min(rate, sent rate)."""
        limiter = AdaptiveRateLimiter(vclock, vclock.sleep)
        await _send_steadily(vclock, limiter, 100)
        cut_at = vclock()
        limiter.on_throttle(sent_at=cut_at - 0.05)  # 80/s
        await vclock.advance(0.5)  # nothing sent since: 50 sends in the last second

        limiter.on_throttle(sent_at=cut_at + 0.11)  # the cut's round trip was 0.05 s

        assert _approx(50.0 * CUT_FACTOR) == limiter.rate

    def test_increase_curve(self):
        """Back to the plateau in 1 s, flat there, then probing; past 1.15x doubling per 0.35 s."""
        at = [0.0, 0.5, 1.0, 1.5, 2.0, 4.0]
        breakout = 1.0 + math.cbrt(0.15 / 0.08)  # when the probe reaches 1.15 times

        rates = [_increase(100.0, 80.0, t) for t in at]

        expected = [80.0, 97.5, 100.0, 101.0, 108.0, 115.0 * 2 ** ((4.0 - breakout) / 0.35)]
        assert _approx(expected) == rates

    def test_slow_start_doubles(self):
        """With no plateau known yet (after the first cut), the rate doubles every 0.35 s."""
        rates = [_increase(math.inf, 80.0, t) for t in (0.0, 0.35, 0.7)]

        assert _approx([80.0, 160.0, 320.0]) == rates

    @pytest.mark.asyncio
    async def test_successes_raise_the_rate_back_to_the_plateau(self, vclock):
        """While sending, successes climb the rate from the cut back to where it was cut from."""
        limiter = AdaptiveRateLimiter(vclock, vclock.sleep)
        limiter.set_rate(100)
        await _send_steadily(vclock, limiter, 100)
        limiter.on_throttle(sent_at=vclock() - 0.05)  # 80/s, plateau 100/s
        t0 = vclock()
        seen: list[tuple[float, float | None]] = []

        while vclock() - t0 < 1.5:
            await limiter.acquire()
            limiter.on_success()
            seen.append((vclock() - t0, limiter.rate))

        assert 80.0 == seen[0][1]
        at_half = next(rate for t, rate in seen if t >= 0.5)
        assert 96.5 < at_half <= 97.5  # the curve, re-planned in steps of 1%
        assert 99.0 <= seen[-1][1] <= 101.0

    @pytest.mark.asyncio
    async def test_an_idle_client_does_not_learn_a_higher_rate(self, vclock):
        """Successes never raise the rate above 1.5 times what was actually sent."""
        limiter = AdaptiveRateLimiter(vclock, vclock.sleep)
        await _send_steadily(vclock, limiter, 100)
        limiter.on_throttle(sent_at=vclock() - 0.05)
        await vclock.advance(5)  # nothing sent: the curve alone would be far above 100/s

        for _ in range(10):
            await limiter.acquire()
            limiter.on_success()

        assert _approx(80.0) == limiter.rate

    @pytest.mark.asyncio
    async def test_set_rate_paces_at_once_and_probes_gently(self, vclock):
        """set_rate paces at that rate at once; successes then only probe slowly above it."""
        limiter = AdaptiveRateLimiter(vclock, vclock.sleep)
        limiter.set_rate(50)
        t0 = vclock()

        for _ in range(25):
            await limiter.acquire()
            limiter.on_success()
        half_second = (vclock() - t0, limiter.rate)
        while vclock() - t0 < 1.0:
            await limiter.acquire()
            limiter.on_success()

        assert (_approx((25 - 1.25) / 50), 50.0) == half_second  # 1.25 tokens at first
        probed = 50 * (1 + 0.08 * (vclock() - t0) ** 3)  # about 54/s after 1 s
        assert 50.5 < limiter.rate <= probed + 1e-9

    def test_never_cuts_below_min_rate(self, vclock):
        """A throttle with almost nothing sent cuts no lower than min_rate."""
        limiter = AdaptiveRateLimiter(vclock, vclock.sleep, min_rate=2.0)

        limiter.on_throttle(sent_at=vclock())

        assert 2.0 == limiter.rate

    @pytest.mark.parametrize("min_rate", [0, -1.0, math.inf, "1"], ids=repr)
    def test_rejects_invalid_min_rate(self, min_rate):
        """min_rate must be a positive finite number."""
        with pytest.raises(ConfigurationError, match="min_rate"):
            AdaptiveRateLimiter(min_rate=min_rate)

    def test_is_a_rate_limiter_with_a_short_repr(self):
        """The limiter satisfies RateLimiter and shows its rate (None while unlimited)."""
        limiter = AdaptiveRateLimiter()

        assert isinstance(limiter, RateLimiter)
        assert "AdaptiveRateLimiter(rate=None)" == repr(limiter)

    @pytest.mark.asyncio
    async def test_simulated_long_run_converges_just_under_the_limit(self, vclock):
        """64 senders, no rate headers: a 50 s run gets >= 0.95 L with <= 0.5% throttled."""
        limit = 500.0

        result = await simulate(vclock, AdaptiveRateLimiter(vclock), [(0, limit)], 50.0)

        assert result.achieved(0, 50) / limit >= 0.95
        assert result.throttled_share(0, 50) <= 0.005

    @pytest.mark.asyncio
    @pytest.mark.parametrize("seed", [7, 8, 9])
    async def test_simulated_startup_near_zero_latency(self, vclock, seed):
        """64 senders 2 to 5 ms away from L = 300/s (burst 30): <= 0.5% throttled from t = 0.

        Counts the start too: the probe, the paced ramp and the first cut. Unlimited after the
        probe, the first wave alone met 34 to 49 throttles (0.8% of the run).
        """
        limit = 300.0

        result = await simulate(
            vclock,
            AdaptiveRateLimiter(vclock),
            [(0, limit)],
            20.0,
            latency=0.007,
            seed=seed,
            probe=True,
            backoff=0.5,
        )

        assert result.achieved(0, 20) / limit >= 0.95
        assert result.throttled_share(0, 20) <= 0.005

    @pytest.mark.asyncio
    async def test_simulated_limit_halved_then_restored(self, vclock):
        """Limit halved: <= 1% throttled from 1 s on; restored: back at 0.9 L within 3 s."""
        limit = 500.0
        limits = [(0, limit), (10, limit / 2), (20, limit)]

        result = await simulate(vclock, AdaptiveRateLimiter(vclock), limits, 24.0)

        assert result.throttled_share(11, 20) <= 0.01
        back_at = result.first_time_at(0.9 * limit, after=20)
        assert back_at is not None
        assert back_at - 20 <= 3.0


class TestRetryBudget:
    def test_starts_full(self):
        """A new budget has all its tokens and allows retries."""
        budget = RetryBudget()

        assert (100.0, True) == (budget.tokens, budget.can_retry())

    @pytest.mark.parametrize(
        ("failures", "expected"), [(4, True), (5, False)], ids=["above-half", "at-half"]
    )
    def test_retries_only_above_half(self, failures, expected):
        """Retrying stops once the tokens are down to half the budget."""
        budget = RetryBudget(max_tokens=10)

        for _ in range(failures):
            budget.on_failure()

        assert expected == budget.can_retry()

    def test_outage_keeps_attempts_near_one_per_call(self):
        """2,000 calls of up to 4 attempts in a total outage make 2,037 attempts (< 1.1/call)."""
        budget = RetryBudget()

        attempts = _run_calls(budget, calls=2000, max_attempts=4, outage=True)

        assert 2037 == attempts
        assert attempts <= 1.1 * 2000

    def test_recovers_when_calls_succeed_again(self):
        """After an outage drains it, 501 successes (0.1 each) bring retries back."""
        budget = RetryBudget()
        _run_calls(budget, calls=2000, max_attempts=4, outage=True)

        for _ in range(500):
            budget.on_success()
        still_off = budget.can_retry()
        budget.on_success()

        assert (0.0 + 50.1, False, True) == (budget.tokens, still_off, budget.can_retry())

    def test_tokens_stay_within_bounds(self):
        """Failures never take the budget below 0 and successes never above its size."""
        budget = RetryBudget(max_tokens=3, token_ratio=0.5)

        for _ in range(10):
            budget.on_failure()
        drained = budget.tokens
        for _ in range(10):
            budget.on_success()

        assert (0.0, 3.0) == (drained, budget.tokens)

    @pytest.mark.parametrize(
        "kwargs",
        [{"max_tokens": 0}, {"max_tokens": math.inf}, {"token_ratio": -0.1}, {"token_ratio": "x"}],
        ids=repr,
    )
    def test_rejects_invalid_settings(self, kwargs):
        """Sizes and ratios must be positive finite numbers."""
        with pytest.raises(ConfigurationError):
            RetryBudget(**kwargs)

    def test_repr_shows_tokens(self):
        """The repr shows the tokens left out of the budget."""
        budget = RetryBudget()
        budget.on_failure()

        assert "RetryBudget(tokens=99/100)" == repr(budget)


def _run_calls(budget: RetryBudget, *, calls: int, max_attempts: int, outage: bool) -> int:
    """Run calls the way the client's retry loop does; return the attempts made."""
    attempts = 0
    for _ in range(calls):
        for attempt in range(1, max_attempts + 1):
            attempts += 1
            if not outage:
                budget.on_success()
                break
            budget.on_failure()
            if attempt == max_attempts or not budget.can_retry():
                break
    return attempts
