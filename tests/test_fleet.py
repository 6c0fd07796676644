"""Clients sharing a RedisRateLimiter: one process's 429 pauses and slows the whole fleet."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis_server import RedisServer, free_port, require, require_binary

from monocloud_async import AttemptEvent, MonoCloudClient, RedisRateLimiter, RetryPolicy

PHONE = "+14155550100"


@pytest.fixture(name="redis_url", scope="module")
def _redis_url():
    try:
        import redis  # noqa: F401, PLC0415
    except ImportError:
        require(False, "redis-py is not installed (pip install 'monocloud-async[redis]')")
    server = RedisServer(require_binary())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def client_for(fake, limiter, **kwargs):
    return MonoCloudClient(fake.domain, fake.api_key, rate_limiter=limiter, **kwargs)


@pytest.mark.asyncio
class TestFleet:
    async def test_a_429_pauses_other_processes(self, fake, redis_url):
        """A stated 429 wait seen by one client holds the sends of another client."""
        key = uuid.uuid4().hex
        user = fake.add_user()
        throttled = asyncio.Event()

        def on_attempt(event: AttemptEvent) -> None:
            if event.outcome == "throttled":
                throttled.set()

        fake.fail_next(1, status=429, retry_after=0.4)
        async with (
            RedisRateLimiter(redis_url, key=key, rate=200) as one,
            RedisRateLimiter(redis_url, key=key, rate=200) as two,
            client_for(fake, one, on_attempt=on_attempt) as a,
            client_for(fake, two) as b,
        ):
            first = asyncio.create_task(a.users.add_phone(user, PHONE))
            await throttled.wait()
            await b.users.get_user(user)
            await first
        times = [r.time for r in fake.requests]
        throttled_at = times[0]
        assert 3 == len(times)
        assert all(t - throttled_at >= 0.35 for t in times[1:])

    async def test_silent_429s_cut_the_fleet_rate(self, fake, redis_url):
        """A 429 without a stated wait lowers the rate every limiter on the key uses."""
        key = uuid.uuid4().hex
        user = fake.add_user()
        async with (
            RedisRateLimiter(redis_url, key=key, rate=100) as one,
            RedisRateLimiter(redis_url, key=key, rate=100) as two,
            client_for(fake, one, retry=RetryPolicy(initial_backoff=0.01)) as a,
        ):
            fake.rate_limit(1000, headers=False)
            fake.fail_next(1, status=429)
            await a.users.get_user(user)
            await two.acquire()
            assert two.effective_rate < 100

    async def test_redis_down_never_fails_a_call(self, fake):
        """With Redis unreachable the client paces locally and every call succeeds."""
        user = fake.add_user()
        url = f"redis://127.0.0.1:{free_port()}/0"
        async with (
            RedisRateLimiter(url, key="k", rate=200) as limiter,
            client_for(fake, limiter) as client,
        ):
            for _ in range(5):
                await client.users.get_user(user)
            assert limiter.degraded
