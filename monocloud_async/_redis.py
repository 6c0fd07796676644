"""Fleet-wide rate limits shared through Redis: :class:`RedisRateLimiter`.

Every process and machine that points a limiter at the same Redis and ``key`` shares one
limit, one 429 gate and one learned rate. redis-py is imported only when a limiter is built,
so ``import monocloud_async`` never needs the ``redis`` extra.

Design (all decisions are made on the Redis server, by Lua scripts, on Redis's clock):

- **One round trip per request.** :meth:`RedisRateLimiter.acquire` runs one script (EVALSHA,
  cached through redis-py's ``register_script``) implementing GCRA, the token bucket written
  as a single "theoretical arrival time" (TAT). The script *reserves* the request's slot,
  possibly in the future, and returns how long to wait for it; the caller sleeps that long
  and sends, with no second round trip and no polling. Time comes from Redis ``TIME`` inside
  the script, so the machines' clocks never matter.
- **Safety margin.** As :class:`~monocloud_async.TokenBucket` does, at most half the burst
  (at least one request) goes out back to back, leaving the other half of the server's
  burst to absorb the jitter with which requests reach it.
- **Shared 429 gate.** :meth:`RedisRateLimiter.on_throttle` with a stated wait stores a
  "paused until" time (Redis time, with a PX expiry); the acquire script schedules nothing
  before it, so a 429 seen by one worker pauses every worker, and after the pause the
  reservations resume at the limited rate instead of all at once.
- **Shared adaptive rate.** A 429 without a stated wait cuts the shared rate to 80% once per
  congestion event (throttles within 200 ms of the last cut belong to the same event).
  :meth:`RedisRateLimiter.on_success` counts locally and every 0.5 s or 50 successes folds an
  additive increase into Redis in one round trip: 5% of the configured rate per second of
  successes, whatever the number of workers, never above the configured rate.
- **Keys vanish when idle.** The TAT key expires a second after the bucket is full again, the
  pause key when the pause ends, the learned rate after a minute without a cut or increase.

Redis failing (refused, timing out, killed, script errors) never raises out of
:meth:`~RedisRateLimiter.acquire` or :meth:`~RedisRateLimiter.on_throttle` and never stalls
longer than ``timeout``: the limiter paces locally at ``fallback_share`` of the rate, logs one
WARNING per outage, re-probes Redis in the background at most once a second, and logs one INFO
when it is back.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import urllib.parse
import warnings
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Self, TypeVar

import attrs

from monocloud_async._ratelimit import (
    CUT_FACTOR,
    Clock,
    Sleep,
    TokenBucket,
    burst_for,
    spendable,
)
from monocloud_async.errors import ConfigurationError

if TYPE_CHECKING:
    from types import TracebackType

    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["RedisRateLimiter"]

logger = logging.getLogger("monocloud_async")

_T = TypeVar("_T")

#: Default connect and command timeout, in seconds: a limiter must answer far faster than a
#: request takes, so a slow Redis is treated as a failing one.
DEFAULT_TIMEOUT: Final = 0.25
#: Default share of the rate each limiter paces at while Redis is unreachable. Each process
#: falls back on its own, so N processes send up to ``N * fallback_share * rate``: pass
#: ``fallback_share=1/N`` for a fleet of N that must stay under the limit during an outage.
DEFAULT_FALLBACK_SHARE: Final = 0.5
#: Connections an owned client keeps, and how many timeouts an acquire may wait for one.
_POOL_SIZE: Final = 8
_POOL_WAIT_FACTOR: Final = 4
#: Throttles within this many seconds of the last cut belong to the same congestion event:
#: the answers to requests already in flight when the rate was cut.
EVENT_WINDOW: Final = 0.2
#: Additive increase: share of the configured rate regained per second of successes.
GROWTH: Final = 0.05
#: A limiter folds its counted successes into Redis this often (seconds) ...
FOLD_INTERVAL: Final = 0.5
#: ... or after this many successes, whichever comes first.
FOLD_COUNT: Final = 50
#: Seconds between two probes of an unreachable Redis.
PROBE_INTERVAL: Final = 1.0
#: Seconds a learned (cut) rate is remembered without any cut or increase.
RATE_TTL: Final = 60.0
#: A cut never takes the rate below this many requests per second (or the configured rate).
MIN_RATE: Final = 1.0

_INSTALL_HINT: Final = 'pip install "monocloud-async[redis]"'

# KEYS: tat, pause, rate.  ARGV: configured rate, capacity (requests let out back to back),
# reserve (1: take the slot; 0: a dry run, used to probe a recovering Redis).
# Returns {milliseconds to wait (0: send now), the rate in force}.
# Times are microseconds of Redis TIME; written with '%.3f' because tostring() keeps only 14
# significant digits, which would round a microsecond epoch to 100 us.
_ACQUIRE_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1])
local shared = tonumber(redis.call('HGET', KEYS[3], 'rate'))
if shared and shared < rate then rate = shared end
local interval = 1000000 / rate
local start = now
local paused = tonumber(redis.call('GET', KEYS[2]))
if paused and paused > start then start = paused end
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < start then tat = start end
local at = tat - (tonumber(ARGV[2]) - 1) * interval
if at < start then at = start end
if ARGV[3] == '1' then
  tat = tat + interval
  redis.call('SET', KEYS[1], string.format('%.3f', tat),
             'PX', string.format('%.0f', math.ceil((tat - now) / 1000) + 1000))
end
return {math.ceil((at - now) / 1000), tostring(rate)}
"""

# KEYS: pause, rate.  ARGV: configured rate, stated wait in ms (-1: none stated), cut factor,
# minimum rate, event window in ms, rate TTL in ms.  Returns {1 if cut else 0, rate in force}.
_THROTTLE_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate = tonumber(ARGV[1])
local shared = tonumber(redis.call('HGET', KEYS[2], 'rate'))
if shared and shared < rate then rate = shared end
local wait_ms = tonumber(ARGV[2])
if wait_ms >= 0 then
  if wait_ms > 0 then
    local resume = now + wait_ms * 1000
    local current = tonumber(redis.call('GET', KEYS[1]))
    if not current or current < resume then
      redis.call('SET', KEYS[1], string.format('%.3f', resume),
                 'PX', string.format('%.0f', math.ceil(wait_ms) + 1))
    end
  end
  return {0, tostring(rate)}
end
local cut_at = tonumber(redis.call('HGET', KEYS[2], 'cut_at'))
if cut_at and now - cut_at < tonumber(ARGV[5]) * 1000 then
  return {0, tostring(rate)}
end
rate = math.max(tonumber(ARGV[4]), rate * tonumber(ARGV[3]))
redis.call('HSET', KEYS[2], 'rate', tostring(rate), 'cut_at', string.format('%.3f', now))
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return {1, tostring(rate)}
"""

# KEYS: rate.  ARGV: configured rate, successes, growth, event window in ms, rate TTL in ms.
# Returns the rate in force.  Each success adds growth * configured / rate: the fleet succeeds
# about `rate` times a second, so the rate regains `growth * configured` per second however
# many workers report, and more slowly when the fleet does not use what it has.
_FOLD_LUA: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local configured = tonumber(ARGV[1])
local rate = tonumber(redis.call('HGET', KEYS[1], 'rate'))
if not rate then return tostring(configured) end
local cut_at = tonumber(redis.call('HGET', KEYS[1], 'cut_at')) or 0
if now - cut_at >= tonumber(ARGV[4]) * 1000 then
  rate = rate + tonumber(ARGV[2]) * tonumber(ARGV[3]) * configured / rate
  if rate >= configured then
    redis.call('DEL', KEYS[1])
    return tostring(configured)
  end
  redis.call('HSET', KEYS[1], 'rate', tostring(rate))
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
end
if rate > configured then rate = configured end
return tostring(rate)
"""


def _number(name: str, value: object, *, minimum: float, inclusive: bool = False) -> float:
    """Return ``value`` as a float, or raise ConfigurationError if not finite and in range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    in_range = number >= minimum if inclusive else number > minimum
    if not math.isfinite(number) or not in_range:
        bound = "at least" if inclusive else "above"
        raise ConfigurationError(
            f"{name} must be a finite number {bound} {minimum:g}, got {value!r}"
        )
    return number


def _redact_url(url: str) -> str:
    """The URL without its password (userinfo) and query (which may carry ``password=``)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid Redis URL>"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        # Without a colon the single userinfo token may well be the password.
        userinfo = f"{user}:***" if colon else "***"
        hostport = f"{userinfo}@{hostport}"
    query = "***" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, hostport, parts.path, query, ""))


def _stated_wait(retry_after: float | None) -> float | None:
    """The server's stated wait in seconds, or None when it stated none (or nonsense)."""
    if retry_after is None or not math.isfinite(retry_after):
        return None
    return max(0.0, float(retry_after))


def _reraise_swallowed_cancel(task: asyncio.Task[Any] | None, cancelling: int) -> None:
    # On Python 3.11 asyncio.wait_for (used inside redis-py) can return a result even though
    # the task was cancelled meanwhile; the cancel request is still counted, so honour it.
    if task is not None and task.cancelling() > cancelling:
        raise asyncio.CancelledError


@attrs.define(eq=False, repr=False)
class RedisRateLimiter:
    """A rate limiter shared by every process using the same Redis and ``key``.

    Same protocol as :class:`~monocloud_async.TokenBucket` (``await limiter.acquire()``
    before each request), so it can be passed as ``MonoCloudClient(rate_limiter=...)``.
    Over any window of ``w`` seconds (on Redis's clock) the whole fleet is given at most
    ``rate * w + burst / 2`` slots; the other half of the burst absorbs the network jitter
    between Redis and the sending processes (see the module documentation for the design).

    Besides :meth:`acquire`, the client reports what the server answered:
    :meth:`on_throttle` for every 429 (shared pause, shared multiplicative cut) and
    :meth:`on_success` for every other answer (shared gradual increase back to ``rate``).

    Redis unavailable or failing never raises and never stalls longer than ``timeout``: the
    limiter paces locally at ``fallback_share * rate`` (a conservative share: every process
    falls back on its own), logs one WARNING on the ``monocloud_async`` logger per outage,
    re-probes Redis at most once a second in the background, and logs one INFO when it is
    back. All workers sharing a ``key`` should be configured with the same ``rate``.

    Args:
        redis: A URL (``redis://[[user]:password@]host:port/db``, ``rediss://``,
            ``unix://``): the limiter opens and owns the connection pool, with ``timeout``
            as connect and command timeout and a single immediate retry on a broken
            connection, and :meth:`aclose` closes it. Or a ``redis.asyncio.Redis`` client,
            which the limiter uses but never closes; its own retry settings apply, and every
            call is still bounded by ``timeout``. Needs Redis 5 or later.
        key: Names the shared limit; every limiter with the same ``key`` shares it.
        rate: Requests per second for the whole fleet; finite and above 0.
        burst: Largest number of requests the server accepts back to back; at least 1.
            Default ``max(1, rate * 0.05)``, as TokenBucket. Half of it can go out at once.
        timeout: Connect and command timeout in seconds (default 0.25).
        clock: Monotonic time in seconds, for the local bookkeeping (probes, folds, fallback).
        sleep: Awaitable sleep, in the same seconds as ``clock``.
        fallback_share: Share of ``rate`` paced at while Redis is unreachable, in (0, 1].

    Raises:
        ConfigurationError: A parameter is out of range, ``redis`` is neither a URL nor a
            ``redis.asyncio.Redis``, or redis-py is not installed.
    """

    _redis_arg: str | Redis = attrs.field(alias="redis")
    _key: str = attrs.field(kw_only=True, alias="key")
    _rate: float = attrs.field(kw_only=True, alias="rate")
    _burst_setting: float | None = attrs.field(default=None, kw_only=True, alias="burst")
    _timeout: float = attrs.field(default=DEFAULT_TIMEOUT, kw_only=True, alias="timeout")
    _clock: Clock = attrs.field(default=time.monotonic, kw_only=True, alias="clock")
    _sleep: Sleep = attrs.field(default=asyncio.sleep, kw_only=True, alias="sleep")
    _fallback_share: float = attrs.field(
        default=DEFAULT_FALLBACK_SHARE, kw_only=True, alias="fallback_share"
    )
    _client: Redis = attrs.field(init=False)
    _owns_client: bool = attrs.field(init=False, default=False)
    _where: str = attrs.field(init=False, default="")
    _keys: tuple[str, str, str] = attrs.field(init=False, default=("", "", ""))
    _acquire_script: AsyncScript = attrs.field(init=False)
    _throttle_script: AsyncScript = attrs.field(init=False)
    _fold_script: AsyncScript = attrs.field(init=False)
    _fallback: TokenBucket = attrs.field(init=False)
    # The rate in force as Redis last said (min of configured and learned), else our own cuts.
    _effective_rate: float = attrs.field(init=False, default=0.0)
    # Shared mode until a Redis call fails; each switch bumps the generation, so a call that
    # started before the switch cannot flip the state back (nor log a second WARNING).
    _up: bool = attrs.field(init=False, default=True)
    _generation: int = attrs.field(init=False, default=0)
    _next_probe_at: float = attrs.field(init=False, default=-math.inf)
    _probe_task: asyncio.Task[None] | None = attrs.field(init=False, default=None)
    _successes: int = attrs.field(init=False, default=0)
    _folded_at: float = attrs.field(init=False, default=0.0)
    _fold_task: asyncio.Task[None] | None = attrs.field(init=False, default=None)
    # Local stand-ins for the shared gate and cut, honoured only while pacing locally.
    _local_resume_at: float = attrs.field(init=False, default=-math.inf)
    _local_cut_at: float = attrs.field(init=False, default=-math.inf)
    _closed: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        """Validate the settings, import redis-py, and open (or adopt) the client."""
        if not isinstance(self._key, str) or not self._key:
            raise ConfigurationError(f"key must be a non-empty string, got {self._key!r}")
        self._rate = _number("rate", self._rate, minimum=0.0)
        if self._burst_setting is not None:
            self._burst_setting = _number("burst", self._burst_setting, minimum=1.0, inclusive=True)
        self._timeout = _number("timeout", self._timeout, minimum=0.0)
        self._fallback_share = _number("fallback_share", self._fallback_share, minimum=0.0)
        if self._fallback_share > 1.0:
            raise ConfigurationError(
                f"fallback_share must be at most 1, got {self._fallback_share!r}"
            )
        try:
            import redis.asyncio as aioredis  # noqa: PLC0415 (optional extra, imported lazily)
            from redis.asyncio.retry import Retry  # noqa: PLC0415
            from redis.backoff import NoBackoff  # noqa: PLC0415
            from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: PLC0415
        except ImportError as exc:
            raise ConfigurationError(f"RedisRateLimiter needs redis-py: {_INSTALL_HINT}") from exc

        arg = self._redis_arg
        if isinstance(arg, str):
            self._where = _redact_url(arg)
            try:
                # A small blocking pool: one round trip per acquire needs few connections, and
                # a burst of acquires (a bulk run starting) must not open a connection each:
                # a hundred connects at once overran the timeout and faked an outage.
                pool = aioredis.BlockingConnectionPool.from_url(
                    arg,
                    max_connections=_POOL_SIZE,
                    timeout=_POOL_WAIT_FACTOR * self._timeout,
                    socket_connect_timeout=self._timeout,
                    socket_timeout=self._timeout,
                    # redis-py retries 10 times with backoff by default: a stall of seconds.
                    # A limiter needs one short attempt, then local pacing. The one immediate
                    # retry on a connection error replaces a pooled connection that predates
                    # a Redis restart, so a recovered Redis is not mistaken for a new outage.
                    retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                    client_name="monocloud-async",
                )
                client = aioredis.Redis.from_pool(pool)
            except ValueError:
                # redis-py's message may quote the URL, password included: do not chain it.
                raise ConfigurationError(
                    f"redis must be a redis://, rediss:// or unix:// URL, got {self._where!r}"
                ) from None
            owns = True
        elif isinstance(arg, aioredis.Redis):
            self._where = f"<{type(arg).__module__}.{type(arg).__qualname__}>"
            client = arg
            owns = False
        else:
            raise ConfigurationError(
                "redis must be a Redis URL or a redis.asyncio.Redis client, "
                f"got {type(arg).__name__}"
            )
        self._client = client
        # One hash tag for all keys: should they ever live on a Redis Cluster, they land in
        # one slot, as a script touching several keys requires.
        prefix = f"monocloud-async:{{{self._key}}}"
        self._keys = (f"{prefix}:tat", f"{prefix}:pause", f"{prefix}:rate")
        self._acquire_script = client.register_script(_ACQUIRE_LUA)
        self._throttle_script = client.register_script(_THROTTLE_LUA)
        self._fold_script = client.register_script(_FOLD_LUA)
        self._effective_rate = self._rate
        self._fallback = TokenBucket(
            self._fallback_share * self._rate,
            burst=max(1.0, self.burst * self._fallback_share),
            clock=self._clock,
            sleep=self._sleep,
        )
        self._folded_at = self._clock()
        self._owns_client = owns

    def __repr__(self) -> str:
        """Show where the limit lives (never a password), the key, rate, burst and mode."""
        mode = "shared" if self._up else "local"
        return (
            f"RedisRateLimiter(redis={self._where!r}, key={self._key!r}, rate={self._rate!r}, "
            f"burst={self.burst!r}, mode={mode!r})"
        )

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if self._owns_client and not self._closed:
            _warn(f"unclosed {self!r}: await its aclose()", ResourceWarning, source=self)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def key(self) -> str:
        """The name of the shared limit."""
        return self._key

    @property
    def rate(self) -> float:
        """The configured rate: requests per second for the whole fleet."""
        return self._rate

    @property
    def burst(self) -> float:
        """The burst: as given, else ``max(1, rate * 0.05)``."""
        return burst_for(self._rate, self._burst_setting)

    @property
    def effective_rate(self) -> float:
        """The rate in force as last seen: ``rate``, or lower after cuts (429s)."""
        return min(self._rate, self._effective_rate)

    @property
    def degraded(self) -> bool:
        """Whether Redis is unreachable and the limiter paces locally."""
        return not self._up

    @property
    def _capacity(self) -> float:
        return spendable(self.burst)

    async def acquire(self) -> None:
        """Wait until the shared limit allows one more request, and account for it.

        One Redis round trip reserves the request's slot; the call then sleeps until it.
        Never raises for Redis failures (it paces locally instead); cancellation propagates.

        Raises:
            RuntimeError: The limiter is closed.
        """
        if self._closed:
            raise RuntimeError("this RedisRateLimiter is closed")
        if self._up:
            reply = await self._attempt(functools.partial(self._run_acquire, reserve=True))
            if reply is not None:
                delay, self._effective_rate = reply
                if delay > 0:
                    # The slot is reserved: a caller cancelled now forfeits it, so the fleet
                    # sends less than the limit allows, never more.
                    await self._sleep(delay)
                return
        else:
            self._maybe_probe()
        wait = self._local_resume_at - self._clock()
        if wait > 0:
            await self._sleep(wait)
        await self._fallback.acquire()

    async def on_throttle(self, retry_after: float | None) -> None:
        """Account for a 429 answer, for every limiter sharing the key.

        With a stated wait (``Retry-After`` or a reset, in seconds), every limiter schedules
        nothing before it ends. Without one, the shared rate is cut to 80%, once per
        congestion event (further throttles within 200 ms of the cut are ignored). One Redis
        round trip, bounded by ``timeout``; never raises for Redis failures (the pause or cut
        then applies locally). A no-op once closed.

        Args:
            retry_after: The server's stated wait in seconds, or None when it stated none.
        """
        if self._closed:
            return
        wait = _stated_wait(retry_after)
        if wait is not None:
            self._local_resume_at = max(self._local_resume_at, self._clock() + wait)
        if self._up:
            rate = await self._attempt(functools.partial(self._run_throttle, wait))
            if rate is not None:
                self._effective_rate = rate
                return
        if wait is None:
            self._cut_locally()

    def on_success(self) -> None:
        """Account for a request that was not throttled (cheap, no I/O on the caller's path).

        After a cut, successes are counted locally and folded into the shared rate every
        0.5 s or 50 successes, by one background round trip that raises the rate gradually
        back towards ``rate``. While no cut is in force this only resets a counter.
        """
        if self._closed or not self._up or self._effective_rate >= self._rate:
            self._successes = 0
            return
        self._successes += 1
        now = self._clock()
        if self._successes < FOLD_COUNT and now - self._folded_at < FOLD_INTERVAL:
            return
        if self._fold_task is not None and not self._fold_task.done():
            return  # the next fold carries these successes too
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to report from; the count carries over to the next call
        successes, self._successes = self._successes, 0
        self._folded_at = now
        self._fold_task = loop.create_task(self._fold(successes))

    async def aclose(self) -> None:
        """Stop background work and close the connection if the limiter opened it.

        A client passed in is left open. A second call is a no-op.
        """
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._probe_task, self._fold_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._owns_client:
            await self._client.aclose()

    async def _attempt(self, call: Callable[[], Awaitable[_T]]) -> _T | None:
        """Run one Redis call bounded by ``timeout``; None (and local pacing) if it fails."""
        generation = self._generation
        task = asyncio.current_task()
        cancelling = 0 if task is None else task.cancelling()
        try:
            async with asyncio.timeout(self._timeout):
                result = await call()
        except Exception as exc:  # noqa: BLE001 (any Redis failure means pacing locally)
            _reraise_swallowed_cancel(task, cancelling)
            self._failed(exc, generation)
            return None
        _reraise_swallowed_cancel(task, cancelling)
        return result

    async def _run_acquire(self, *, reserve: bool) -> tuple[float, float]:
        reply = await self._acquire_script(
            keys=self._keys, args=(self._rate, self._capacity, 1 if reserve else 0)
        )
        return int(reply[0]) / 1000.0, float(reply[1])

    async def _run_throttle(self, wait: float | None) -> float:
        reply = await self._throttle_script(
            keys=self._keys[1:],
            args=(
                self._rate,
                -1 if wait is None else wait * 1000.0,
                CUT_FACTOR,
                min(self._rate, MIN_RATE),
                EVENT_WINDOW * 1000.0,
                round(RATE_TTL * 1000),
            ),
        )
        return float(reply[1])

    async def _run_fold(self, successes: int) -> float:
        reply = await self._fold_script(
            keys=self._keys[2:],
            args=(self._rate, successes, GROWTH, EVENT_WINDOW * 1000.0, round(RATE_TTL * 1000)),
        )
        return float(reply)

    async def _fold(self, successes: int) -> None:
        rate = await self._attempt(functools.partial(self._run_fold, successes))
        if rate is not None:
            self._effective_rate = rate

    def _maybe_probe(self) -> None:
        if self._probe_task is not None and not self._probe_task.done():
            return
        now = self._clock()
        if now < self._next_probe_at:
            return
        self._next_probe_at = now + PROBE_INTERVAL
        self._probe_task = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        # A dry run of the acquire script: it proves the connection, the script cache and the
        # keys all work, so a Redis that answers PING but fails the script stays "down".
        reply = await self._attempt(functools.partial(self._run_acquire, reserve=False))
        if reply is None or self._up:
            return
        self._effective_rate = reply[1]
        self._up = True
        self._generation += 1
        logger.info("Redis rate limiter for key %r is back: using the shared limit", self._key)

    def _failed(self, exc: Exception, generation: int) -> None:
        if not self._up or generation != self._generation:
            logger.debug("Redis rate limiter for key %r: still unavailable: %r", self._key, exc)
            return
        self._up = False
        self._generation += 1
        self._next_probe_at = self._clock() + PROBE_INTERVAL
        rate = self._fallback_share * self.effective_rate
        self._fallback.set_rate(rate)
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        logger.warning(
            "Redis rate limiter for key %r unavailable (%s); pacing locally at %.4g "
            "requests/s until Redis answers again",
            self._key,
            reason,
            rate,
        )

    def _cut_locally(self) -> None:
        now = self._clock()
        if now - self._local_cut_at < EVENT_WINDOW:
            return
        self._local_cut_at = now
        self._effective_rate = max(min(self._rate, MIN_RATE), self.effective_rate * CUT_FACTOR)
        self._fallback.set_rate(self._fallback_share * self._effective_rate)
