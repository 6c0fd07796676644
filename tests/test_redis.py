"""Tests for RedisRateLimiter, against a real redis-server started on a free loopback port.

The server comes from ``tests/redis_server.py``: one per session for most tests, one per test
where the test kills and restarts it. Without a redis-server binary (or without redis-py)
these tests skip, except under CI where they fail. Every test uses its own key.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from redis_server import RedisServer, free_port, require, require_binary

from monocloud_async._redis import CUT_FACTOR, RedisRateLimiter
from monocloud_async.errors import ConfigurationError

try:
    import redis.asyncio as aioredis
except ImportError:  # the tests that need it skip (or fail under CI) through require()
    aioredis = None  # type: ignore[assignment]

LOGGER = "monocloud_async"


def _require_redis_py() -> None:
    require(aioredis is not None, 'redis-py is not installed: pip install "monocloud-async[redis]"')


@pytest.fixture(name="redis_binary", scope="session")
def _redis_binary() -> str:
    """The redis-server binary (skips, or fails under CI, when there is none)."""
    _require_redis_py()
    return require_binary()


@pytest.fixture(name="redis_server", scope="session")
def _redis_server(redis_binary: str) -> Iterator[RedisServer]:
    """A redis-server shared by the session's tests, stopped at the end."""
    server = RedisServer(redis_binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="own_server")
def _own_server(redis_binary: str) -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may stop and restart."""
    server = RedisServer(redis_binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="key")
def _key() -> str:
    """A key no other test uses."""
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture(name="unreachable_url")
def _unreachable_url() -> str:
    """A Redis URL on a loopback port nothing listens on."""
    _require_redis_py()
    return f"redis://127.0.0.1:{free_port()}/0"


@pytest_asyncio.fixture(name="silent_port")
async def _silent_port() -> AsyncIterator[int]:
    """A loopback port that accepts connections and never answers (a hung Redis)."""
    _require_redis_py()
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest_asyncio.fixture(name="admin")
async def _admin(redis_server: RedisServer) -> AsyncIterator[Any]:
    """A plain redis.asyncio client on the session server, to look at the keys."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture(name="make_limiter")
async def _make_limiter(key: str) -> AsyncIterator[Callable[..., RedisRateLimiter]]:
    """Build limiters on the test's key; all are closed after the test."""
    made: list[RedisRateLimiter] = []

    def make(redis: Any, **kwargs: Any) -> RedisRateLimiter:
        kwargs.setdefault("key", key)
        kwargs.setdefault("rate", 100)
        limiter = RedisRateLimiter(redis, **kwargs)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


@pytest.fixture(name="logs")
def _logs(caplog: pytest.LogCaptureFixture) -> Callable[[int], list[str]]:
    """The package logger's messages at exactly one level."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)

    def at(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]

    return at


def _keys(key: str) -> tuple[str, str, str]:
    prefix = f"monocloud-async:{{{key}}}"
    return f"{prefix}:tat", f"{prefix}:pause", f"{prefix}:rate"


def _max_in_window(times: list[float], window: float) -> int:
    """The largest number of admissions within any half-open window of ``window`` seconds."""
    return max(bisect.bisect_left(times, t + window) - i for i, t in enumerate(times))


async def _run_workers(
    limiters: list[RedisRateLimiter], per_limiter: int, seconds: float
) -> list[float]:
    """Acquire in a loop from ``per_limiter`` tasks per limiter; the sorted admission times."""
    times: list[float] = []
    end = time.monotonic() + seconds

    async def worker(limiter: RedisRateLimiter) -> None:
        while time.monotonic() < end:
            await limiter.acquire()
            times.append(time.monotonic())

    await asyncio.gather(*(worker(lim) for lim in limiters for _ in range(per_limiter)))
    return sorted(times)


async def _admitted(limiter: RedisRateLimiter) -> float:
    """Acquire; the monotonic time of admission."""
    await limiter.acquire()
    return time.monotonic()


async def _cancel_after(seconds: float, coro: Any) -> float:
    """Cancel ``coro`` after ``seconds``; assert it raised CancelledError; return the time."""
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(seconds)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return time.monotonic() - started


class TestConfiguration:
    """Validation, the optional dependency, and what the limiter shows of itself."""

    @pytest.mark.parametrize(
        ("option", "value"),
        [
            ("rate", 0),
            ("rate", -1.0),
            ("rate", math.nan),
            ("rate", math.inf),
            ("rate", "10"),
            ("rate", True),
            ("burst", 0.5),
            ("burst", math.inf),
            ("burst", math.nan),
            ("key", ""),
            ("key", 7),
            ("timeout", 0),
            ("timeout", math.inf),
            ("fallback_share", 0),
            ("fallback_share", 1.5),
        ],
        ids=repr,
    )
    def test_rejects_out_of_range_settings(self, option, value):
        """An invalid rate, burst, key, timeout or fallback share is a ConfigurationError."""
        kwargs: dict[str, Any] = {"key": "k", "rate": 10.0, option: value}
        with pytest.raises(ConfigurationError, match=option):
            RedisRateLimiter("redis://127.0.0.1:1/0", **kwargs)

    @pytest.mark.parametrize("redis", [None, 6379, "http://127.0.0.1:6379/0"], ids=repr)
    def test_rejects_what_is_not_redis(self, redis):
        """Something that is neither a Redis URL nor a redis.asyncio client is rejected."""
        _require_redis_py()
        with pytest.raises(ConfigurationError, match="redis"):
            RedisRateLimiter(redis, key="k", rate=10)

    def test_names_the_extra_when_redis_is_missing(self, monkeypatch):
        """Without redis-py, building a limiter says which extra to install."""
        for name in ("redis", "redis.asyncio", "redis.asyncio.retry", "redis.backoff"):
            monkeypatch.setitem(sys.modules, name, None)
        with pytest.raises(ConfigurationError) as caught:
            RedisRateLimiter("redis://127.0.0.1:1/0", key="k", rate=10)
        assert 'pip install "monocloud-async[redis]"' in str(caught.value)

    def test_importing_the_package_does_not_import_redis(self):
        """Importing monocloud_async (and the limiter's module) leaves redis-py unimported."""
        code = "import sys, monocloud_async, monocloud_async._redis; print('redis' in sys.modules)"
        out = subprocess.run(  # noqa: S603 (our own interpreter, fixed arguments)
            [sys.executable, "-c", code], capture_output=True, text=True, check=False
        )
        assert (0, "False", "") == (out.returncode, out.stdout.strip(), out.stderr)

    @pytest.mark.asyncio
    async def test_repr_hides_the_password(self, unreachable_url):
        """The URL's password and query never appear in the repr."""
        url = unreachable_url.replace("//", "//user:s3cret@") + "?password=s3cret2"
        limiter = RedisRateLimiter(url, key="k", rate=10)
        try:
            text = repr(limiter)
        finally:
            await limiter.aclose()
        assert "s3cret" not in text
        assert "user:***@127.0.0.1" in text

    @pytest.mark.asyncio
    async def test_default_burst_is_a_twentieth_of_a_second(self, unreachable_url):
        """The default burst is max(1, rate * 0.05), as TokenBucket's."""
        async with (
            RedisRateLimiter(unreachable_url, key="k", rate=200) as fast,
            RedisRateLimiter(unreachable_url, key="k", rate=5) as slow,
        ):
            assert (10.0, 1.0) == (fast.burst, slow.burst)


@pytest.mark.redis
@pytest.mark.asyncio
class TestSharedLimit:
    """Several limiters with their own connections share one limit."""

    async def test_no_window_admits_more_than_rate_times_window_plus_burst(
        self, redis_server, make_limiter
    ):
        """Four limiters x four tasks: every window stays under rate*w + burst; rate ~ 100/s."""
        rate, burst = 100, 10
        limiters = [make_limiter(redis_server.url, rate=rate, burst=burst) for _ in range(4)]
        times = await _run_workers(limiters, per_limiter=4, seconds=1.2)

        windows = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
        over = {
            w: (n, rate * w + burst)
            for w in windows
            if (n := _max_in_window(times, w)) > rate * w + burst
        }
        assert {} == over
        long_run = (len(times) - burst / 2) / (times[-1] - times[0])
        assert pytest.approx(rate, rel=0.1) == long_run

    async def test_lets_out_at_most_half_the_burst_at_once(self, redis_server, make_limiter):
        """Ten concurrent acquires on an idle key: five at once (half of burst 10), then 50/s."""
        limiter = make_limiter(redis_server.url, rate=50, burst=10)
        await asyncio.gather(*(limiter._client.ping() for _ in range(10)))  # connections ready
        started = time.monotonic()
        times = sorted(await asyncio.gather(*(_admitted(limiter) for _ in range(10))))
        offsets = [t - started for t in times]
        # Never earlier than the schedule (a busy machine can only make them later) ...
        assert [] == [k for k, off in enumerate(offsets) if off < (k - 4) * 0.02]
        # ... and the first five did not wait for each other (one by one takes 80 ms).
        assert times[4] - times[0] < 0.05

    async def test_keys_expire_when_idle(self, redis_server, make_limiter, admin, key):
        """Every key carries a TTL: the slot key about a second, the pause its length."""
        limiter = make_limiter(redis_server.url)
        tat, pause, rate = _keys(key)
        await limiter.acquire()
        await limiter.on_throttle(0.2)
        await limiter.on_throttle(None)
        ttls = [await admin.pttl(tat), await admin.pttl(pause), await admin.pttl(rate)]
        assert [True, True, True] == [
            0 < ttls[0] <= 1100,
            0 < ttls[1] <= 201,
            50_000 < ttls[2] <= 60_000,
        ]

    async def test_works_with_a_decoding_client(self, redis_server, make_limiter):
        """A client with decode_responses=True (str replies) works the same."""
        client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            limiter = make_limiter(client)
            await limiter.acquire()
            await limiter.on_throttle(None)
            await limiter.acquire()
            assert (False, 80.0) == (limiter.degraded, limiter.effective_rate)
        finally:
            await client.aclose()


@pytest.mark.redis
@pytest.mark.asyncio
class TestSharedGate:
    """A 429 seen by one worker pauses every worker."""

    async def test_throttle_in_one_limiter_delays_another(self, redis_server, make_limiter):
        """on_throttle(0.2) from A: B's next acquire waits about 0.2 s."""
        a, b = make_limiter(redis_server.url), make_limiter(redis_server.url)
        await asyncio.gather(a._client.ping(), b._client.ping())  # connections ready
        started = time.monotonic()  # before the pause starts on Redis: a lower bound
        await a.on_throttle(0.2)
        await b.acquire()
        elapsed = time.monotonic() - started
        assert 0.2 <= elapsed < 0.5

    async def test_pause_only_extends(self, redis_server, make_limiter):
        """A shorter stated wait does not shorten a pause already in force."""
        a, b = make_limiter(redis_server.url), make_limiter(redis_server.url)
        started = time.monotonic()
        await a.on_throttle(0.3)
        await b.on_throttle(0.05)
        await b.acquire()
        assert time.monotonic() - started >= 0.3

    async def test_after_a_pause_requests_resume_at_the_rate(self, redis_server, make_limiter):
        """Twenty waiters behind a pause do not stampede: half the burst, then the rate."""
        a, b = (make_limiter(redis_server.url, rate=100, burst=10) for _ in range(2))
        # Open B's twenty connections first: setting them up must not eat into the pause.
        await asyncio.gather(*(b._client.ping() for _ in range(20)))
        paused_at = time.monotonic()  # before the pause starts on Redis: a lower bound
        await a.on_throttle(0.15)
        times = sorted(await asyncio.gather(*(_admitted(b) for _ in range(20))))
        offsets = [t - paused_at for t in times]
        # Nobody before the pause ends, then half the burst, then one per 10 ms; a busy
        # machine can only make them later.
        schedule = [0.15 + max(0, k - 4) * 0.01 for k in range(20)]
        assert [] == [k for k, off in enumerate(offsets) if off < schedule[k]]
        assert offsets[-1] < schedule[-1] + 0.2


@pytest.mark.redis
@pytest.mark.asyncio
class TestAdaptiveRate:
    """Throttles without a stated wait cut the shared rate; successes raise it back."""

    async def test_cut_is_seen_by_another_limiter(self, redis_server, make_limiter):
        """A's throttle without retry_after lowers the rate B paces at to 80%."""
        a, b = make_limiter(redis_server.url, burst=2), make_limiter(redis_server.url, burst=2)
        await a.on_throttle(None)
        started = time.monotonic()
        for _ in range(17):
            await b.acquire()
        elapsed = time.monotonic() - started
        assert 100 * CUT_FACTOR == b.effective_rate
        # One now, sixteen 12.5 ms apart: 0.2 s at 80/s (0.16 s at the uncut 100/s).
        assert 0.2 <= elapsed < 0.4

    async def test_cuts_once_per_congestion_event(self, redis_server, make_limiter):
        """Five throttles at once cut once; one after the 200 ms event window cuts again."""
        a, b = make_limiter(redis_server.url), make_limiter(redis_server.url)
        await asyncio.gather(*(a.on_throttle(None) for _ in range(5)))
        await b.acquire()
        once = b.effective_rate
        await asyncio.sleep(0.25)
        await a.on_throttle(None)
        await b.acquire()
        assert (80.0, 64.0) == (once, b.effective_rate)

    async def test_successes_raise_the_rate_back_to_the_configured_one(
        self, redis_server, make_limiter, admin, key
    ):
        """After a cut, successes fold a gradual increase in; it stops at the configured rate."""
        a, b = make_limiter(redis_server.url), make_limiter(redis_server.url)
        await a.on_throttle(None)
        await b.acquire()  # B learns of the cut
        await asyncio.sleep(0.25)  # past the event window, where successes do not count
        rates = []
        for _ in range(12):
            for _ in range(50):
                b.on_success()
            await asyncio.sleep(0.01)
            await a.acquire()
            rates.append(a.effective_rate)
        assert 80 < rates[0] < 85
        assert rates == sorted(rates)
        assert (100.0, 0) == (rates[-1], await admin.exists(_keys(key)[2]))

    async def test_success_without_a_cut_costs_no_round_trip(self, redis_server, make_limiter):
        """At the configured rate on_success schedules nothing."""
        limiter = make_limiter(redis_server.url)
        await limiter.acquire()
        for _ in range(200):
            limiter.on_success()
        assert None is limiter._fold_task


@pytest.mark.asyncio
class TestOutage:
    """Redis unreachable or dying: no exception, no stall, local pacing, one WARNING."""

    @pytest.mark.redis
    @pytest.mark.parametrize("how", ["terminate", "kill"])
    async def test_server_killed_mid_run_falls_back_and_recovers(
        self, own_server, make_limiter, logs, how
    ):
        """Killed mid-run: fallback at half the rate, one WARNING; restarted: one INFO, shared."""
        limiter = make_limiter(own_server.url, rate=100, burst=10, timeout=0.25)
        times: list[float] = []
        stop = asyncio.Event()

        async def worker() -> None:
            while not stop.is_set():
                await limiter.acquire()
                times.append(time.monotonic())

        workers = [asyncio.create_task(worker()) for _ in range(4)]
        await asyncio.sleep(0.3)
        await (own_server.astop() if how == "terminate" else own_server.akill())
        down_at = time.monotonic()
        await asyncio.sleep(0.6)
        degraded = limiter.degraded
        await own_server.astart()
        deadline = time.monotonic() + 2.5
        while limiter.degraded and time.monotonic() < deadline:  # noqa: ASYNC110 (no event)
            await asyncio.sleep(0.01)
        up_at = time.monotonic()
        await asyncio.sleep(0.4)
        stop.set()
        await asyncio.gather(*workers)  # re-raises if any acquire raised

        during = sum(down_at + 0.1 <= t < down_at + 0.6 for t in times)
        after = sum(up_at + 0.05 <= t < up_at + 0.4 for t in times)
        assert (True, False) == (degraded, limiter.degraded)
        assert 0.6 * 25 <= during <= 50 * 0.5 + 5  # 50/s = fallback_share 0.5 x 100/s
        assert after >= 0.8 * 35  # back at 100/s, beyond what the fallback allows
        assert (1, 1) == (len(logs(logging.WARNING)), len(logs(logging.INFO)))
        client = aioredis.Redis.from_url(own_server.url)
        try:
            assert 1 == await client.exists(_keys(limiter.key)[0])
        finally:
            await client.aclose()

    async def test_unreachable_from_the_start_paces_locally_at_once(
        self, unreachable_url, make_limiter, logs
    ):
        """Nothing listening: twelve concurrent acquires return at the fallback pace."""
        limiter = make_limiter(unreachable_url, rate=100, burst=10, timeout=0.25)
        started = time.monotonic()
        times = sorted(await asyncio.gather(*(_admitted(limiter) for _ in range(12))))
        assert times[0] - started < 0.25  # refused at once: no timeout waited out
        # Fallback: 50/s, 2.5 at once (half of a burst of 5), so 9.5 intervals of 20 ms.
        assert 0.18 <= times[-1] - times[0] < 0.4
        assert (True, 1) == (limiter.degraded, len(logs(logging.WARNING)))

    async def test_hung_redis_costs_at_most_the_timeout(self, silent_port, make_limiter, logs):
        """A Redis that never answers: the first acquire returns after ~timeout, then local."""
        limiter = make_limiter(f"redis://127.0.0.1:{silent_port}/0", rate=100, timeout=0.1)
        started = time.monotonic()
        await limiter.acquire()
        first = time.monotonic() - started
        await limiter.acquire()
        assert 0.09 <= first < 0.2
        assert time.monotonic() - started < 0.25
        warnings = logs(logging.WARNING)
        assert (1, True) == (len(warnings), "TimeoutError" in warnings[0])

    async def test_throttles_apply_locally_during_an_outage(self, unreachable_url, make_limiter):
        """Unreachable: on_throttle returns at once; its pause and a single cut apply locally."""
        limiter = make_limiter(unreachable_url, rate=100)
        await limiter.acquire()
        started = time.monotonic()
        await limiter.on_throttle(None)
        await limiter.on_throttle(None)
        await limiter.on_throttle(0.2)
        returned = time.monotonic() - started
        await limiter.acquire()
        assert returned < 0.1
        assert 0.2 <= time.monotonic() - started < 0.4
        assert 80.0 == limiter.effective_rate


@pytest.mark.asyncio
class TestCancellation:
    """Cancelling an acquire always raises CancelledError, wherever it waits."""

    async def test_cancelled_during_the_redis_call(self, silent_port, make_limiter, logs):
        """Cancelled while Redis has not answered: CancelledError, and no outage declared."""
        limiter = make_limiter(f"redis://127.0.0.1:{silent_port}/0", timeout=1.0)
        took = await _cancel_after(0.05, limiter.acquire())
        assert took < 0.1
        assert (False, []) == (limiter.degraded, logs(logging.WARNING))

    @pytest.mark.redis
    async def test_cancelled_while_waiting_for_its_slot(self, redis_server, make_limiter):
        """Cancelled while sleeping until its reserved slot: CancelledError at once."""
        a, b = make_limiter(redis_server.url), make_limiter(redis_server.url)
        await a.on_throttle(0.5)
        assert await _cancel_after(0.05, b.acquire()) < 0.1

    async def test_cancelled_while_pacing_locally(self, unreachable_url, make_limiter):
        """Cancelled while waiting for a local token during an outage: CancelledError."""
        limiter = make_limiter(unreachable_url, rate=2)
        await limiter.acquire()
        assert await _cancel_after(0.05, limiter.acquire()) < 0.1

    async def test_cancellation_swallowed_by_redis_is_re_raised(
        self, unreachable_url, make_limiter
    ):
        """A redis call that eats the cancellation (3.11 wait_for) still ends in CancelledError."""
        limiter = make_limiter(unreachable_url)

        async def swallowing(**_: Any) -> list[Any]:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                return [0, b"100"]  # what asyncio.wait_for may do on Python 3.11
            return [0, b"100"]

        limiter._acquire_script = swallowing  # type: ignore[assignment]
        assert await _cancel_after(0.02, limiter.acquire()) < 0.1


@pytest.mark.asyncio
class TestClose:
    """aclose() closes what the limiter opened and nothing else."""

    @pytest.mark.redis
    async def test_closes_a_connection_it_opened(self, redis_server, admin):
        """Built from a URL: aclose() closes its connection (gone from CLIENT LIST)."""
        name = f"owned-{uuid.uuid4().hex}"
        limiter = RedisRateLimiter(f"{redis_server.url}?client_name={name}", key=name, rate=10)
        await limiter.acquire()
        before = await self._clients_named(admin, name)
        await limiter.aclose()
        await limiter.aclose()  # a second call is a no-op
        after = await self._eventually(admin, name, 0)
        assert (1, 0) == (before, after)

    @pytest.mark.redis
    async def test_leaves_an_injected_client_open(self, redis_server, admin):
        """Given a client: aclose() leaves it connected and usable."""
        name = f"injected-{uuid.uuid4().hex}"
        client = aioredis.Redis.from_url(redis_server.url, client_name=name)
        try:
            async with RedisRateLimiter(client, key=name, rate=10) as limiter:
                await limiter.acquire()
            await asyncio.sleep(0.05)
            assert (1, True) == (await self._clients_named(admin, name), await client.ping())
        finally:
            await client.aclose()

    async def test_acquire_after_close_raises(self, unreachable_url):
        """A closed limiter refuses acquire() with RuntimeError."""
        limiter = RedisRateLimiter(unreachable_url, key="k", rate=10)
        await limiter.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await limiter.acquire()

    async def test_warns_when_an_owned_connection_is_never_closed(self, unreachable_url):
        """A URL-built limiter dropped without aclose() emits a ResourceWarning."""
        limiter = RedisRateLimiter(unreachable_url, key="k", rate=10)
        with pytest.warns(ResourceWarning, match="unclosed RedisRateLimiter"):
            del limiter  # CPython frees it (and runs __del__) right here

    @staticmethod
    async def _clients_named(admin: Any, name: str) -> int:
        return sum(c.get("name") == name for c in await admin.client_list())

    @classmethod
    async def _eventually(cls, admin: Any, name: str, expected: int) -> int:
        # The server notices a closed connection a moment after the client closed it.
        deadline = time.monotonic() + 1.0
        while (count := await cls._clients_named(admin, name)) != expected:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        return count
