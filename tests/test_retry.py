"""Retries, the 429 gate, pacing from headers and reconciliation, on a fake clock."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime
from email.utils import format_datetime

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.client_reqrep import ConnectionKey
from aioresponses import aioresponses
from helpers import TopOfRange

from monocloud_async import AttemptEvent, MonoCloudClient, RetryPolicy, errors
from monocloud_async._retry import classify

DOMAIN = "acme.us.monocloud.com"
BASE = f"https://{DOMAIN}/api"
URL = f"{BASE}/users/u/phones"
USER_URL = f"{BASE}/users/u"
KEY = "mc_secret"
PHONE = "+919988776655"
CONN_KEY = ConnectionKey("127.0.0.1", 1, False, True, None, None, None, None)
PROBLEM = {"Content-Type": "application/problem+json"}


@pytest.fixture(name="mocked")
def _mocked():
    with aioresponses() as m:
        yield m


def make_client(clock, **kwargs):
    kwargs.setdefault("rng", random.Random(7))
    return MonoCloudClient(DOMAIN, KEY, clock=clock, sleep=clock.sleep, **kwargs)


@pytest_asyncio.fixture(name="client")
async def _client(clock):
    async with make_client(clock) as client:
        yield client


def with_phone(user_json, phone=PHONE):
    user = dict(user_json)
    user["phone_numbers"] = [
        *user_json["phone_numbers"],
        {"id": "p2", "phone": phone, "primary": False, "verified": False},
    ]
    return user


def duplicate_body():
    return json.dumps(
        {
            "type": "https://httpstatuses.io/422#identity-validation-error",
            "title": "Unprocessable",
            "status": 422,
            "errors": [{"code": "DuplicatePhoneNumber", "description": "exists"}],
        }
    )


def sent(mocked, method="POST", url=URL):
    return sum(
        len(calls) for (m, u), calls in mocked.requests.items() if m == method and str(u) == url
    )


class TestRetryPolicy:
    def test_defaults(self):
        """The documented defaults."""
        policy = RetryPolicy()
        assert (4, 0.5, 8.0, 60.0) == (
            policy.max_attempts,
            policy.initial_backoff,
            policy.max_backoff,
            policy.max_retry_after,
        )

    def test_none(self):
        """RetryPolicy.none() allows one attempt and no budget."""
        assert (1, None) == (RetryPolicy.none().max_attempts, RetryPolicy.none().retry_budget)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"max_attempts": 0},
            {"max_attempts": 2.5},
            {"initial_backoff": -1},
            {"max_backoff": float("inf")},
            {"max_retry_after": float("nan")},
            {"retry_budget": (0, 0.1)},
        ],
    )
    def test_invalid(self, kwargs):
        """Invalid settings are ConfigurationErrors."""
        with pytest.raises(errors.ConfigurationError):
            RetryPolicy(**kwargs)

    @pytest.mark.parametrize("retry", [1, 2, 3, 4, 5, 8])
    def test_full_jitter_bounds(self, retry):
        """Backoff n is within [0, min(max_backoff, initial * 2**(n-1))]."""
        policy = RetryPolicy(initial_backoff=0.5, max_backoff=8.0)
        cap = min(8.0, 0.5 * 2 ** (retry - 1))
        rng = random.Random(retry)
        waits = [policy.backoff(retry, rng) for _ in range(200)]
        assert all(0 <= w <= cap for w in waits)
        assert max(waits) > cap * 0.9
        assert cap == policy.backoff(retry, TopOfRange())


S = "sent once"
R = "retried"


def connector_error():
    return aiohttp.ClientConnectorError(CONN_KEY, OSError(111, "refused"))


def cert_error():
    return aiohttp.ClientConnectorCertificateError(CONN_KEY, ValueError("bad cert"))


@pytest.mark.asyncio
class TestClassification:
    @pytest.mark.parametrize(
        ("status", "expected"),
        [
            (500, R),
            (502, R),
            (503, R),
            (504, R),
            (400, S),
            (401, S),
            (402, S),
            (403, S),
            (404, S),
            (409, S),
            (422, S),
            (418, S),
            (501, S),
        ],
    )
    async def test_status(self, mocked, client, user_json, status, expected):
        """5xx 500/502/503/504 are retried; every other error status is sent exactly once."""
        mocked.post(URL, status=status, body="x", headers=PROBLEM)
        mocked.post(URL, payload=user_json)
        if expected == R:
            await client.users.add_phone("u", PHONE)
            assert 2 == sent(mocked)
        else:
            with pytest.raises(errors.APIError) as info:
                await client.users.add_phone("u", PHONE)
            assert (status, 1, 1) == (info.value.status, info.value.attempts, sent(mocked))

    @pytest.mark.parametrize(
        ("make_exc", "expected", "maybe_processed"),
        [
            (connector_error, R, False),
            (aiohttp.ConnectionTimeoutError, R, False),
            (aiohttp.ServerDisconnectedError, R, True),
            (aiohttp.SocketTimeoutError, R, True),
            (lambda: aiohttp.ClientPayloadError("cut"), R, True),
            (lambda: ConnectionResetError(104, "reset"), R, True),
            (cert_error, S, False),
        ],
        ids=["refused", "connect-timeout", "disconnect", "read-timeout", "payload", "reset", "tls"],
    )
    async def test_transport(self, mocked, client, user_json, make_exc, expected, maybe_processed):
        """Not-sent and ambiguous network failures are retried; TLS failures are not."""
        mocked.post(URL, exception=make_exc())
        mocked.post(URL, payload=user_json)
        if expected == R:
            await client.users.add_phone("u", PHONE)
            assert 2 == sent(mocked)
        else:
            with pytest.raises(errors.MonoCloudConnectionError):
                await client.users.add_phone("u", PHONE)
            assert 1 == sent(mocked)

    @pytest.mark.parametrize(
        ("exc", "expected"),
        [
            (errors.MonoCloudConnectionError("x", maybe_sent=False), (True, False)),
            (errors.MonoCloudTimeoutError("x", maybe_sent=True), (True, True)),
            (errors.ServerError("x", status=503), (True, False)),
            (errors.ServerError("x", status=502), (True, True)),
            (errors.ConflictError("x", status=409), (False, False)),
            (errors.RateLimitError("x", status=429), (False, False)),
            (errors.ResponseDecodeError("x"), (False, False)),
            (asyncio.CancelledError(), (False, False)),
        ],
    )
    async def test_classify_table(self, exc, expected):
        """classify() returns (retryable, maybe_processed) per the documented table."""
        assert expected == classify(exc)


@pytest.mark.asyncio
class TestBackoffAndDeadline:
    async def test_gives_up_after_max_attempts_with_our_error(self, mocked, clock):
        """A persistent 503 ends in ServerError (not tenacity's) carrying attempts."""
        for _ in range(5):
            mocked.post(URL, status=503)
        async with make_client(
            clock, retry=RetryPolicy(max_attempts=4), rng=TopOfRange()
        ) as client:
            with pytest.raises(errors.ServerError) as info:
                await client.users.add_phone("u", PHONE)
        assert (4, 4) == (info.value.attempts, sent(mocked))
        assert [0.5, 1.0, 2.0] == clock.sleeps

    async def test_never_sleeps_past_the_deadline(self, mocked, clock):
        """A backoff that would overrun the deadline is not started: the last error is raised."""
        for _ in range(5):
            mocked.post(URL, status=503)
        policy = RetryPolicy(max_attempts=5, initial_backoff=2.0, max_backoff=2.0)
        async with make_client(clock, retry=policy, deadline=5.0, rng=TopOfRange()) as client:
            with pytest.raises(errors.ServerError) as info:
                await client.users.add_phone("u", PHONE)
        assert [2.0, 2.0] == clock.sleeps
        assert 3 == info.value.attempts

    async def test_events_report_each_attempt(self, mocked, clock, user_json):
        """on_attempt receives one event per request with outcome, status and wait."""
        events: list[AttemptEvent] = []
        mocked.post(URL, status=503, headers={"X-Request-Id": "r1"})
        mocked.post(URL, payload=user_json)
        async with make_client(clock, on_attempt=events.append) as client:
            await client.users.add_phone("u", PHONE)
        assert [("retry", 503, 1, "r1"), ("success", 200, 2, None)] == [
            (e.outcome, e.status, e.attempt, e.request_id) for e in events
        ]
        assert "add_phone" == events[0].operation


@pytest.mark.asyncio
class TestThrottling:
    @pytest.mark.parametrize(
        ("headers", "waited"),
        [
            ({"Retry-After": "0"}, 0.0),
            ({"Retry-After": "5"}, 5.0),
            ({"Retry-After": "60"}, 60.0),
            ({"RateLimit-Reset": "3", "RateLimit-Remaining": "0"}, 3.0),
            ({"RateLimit": '"default";r=0;t=4'}, 4.0),
        ],
        ids=["zero", "five", "cap", "reset", "combined"],
    )
    async def test_waits_the_stated_time(self, mocked, clock, user_json, headers, waited):
        """A 429's stated wait is waited out (at the gate) and the request re-sent."""
        mocked.post(URL, status=429, headers=headers)
        mocked.post(URL, payload=user_json)
        async with make_client(clock, retry=RetryPolicy.none(), deadline=120.0) as client:
            start = clock.now
            await client.users.add_phone("u", PHONE)
        assert 2 == sent(mocked)
        assert waited <= clock.now - start <= waited + 0.05 + 0.1 * waited

    async def test_epoch_reset(self, mocked, clock, user_json):
        """X-RateLimit-Reset above a day is an epoch timestamp."""
        mocked.post(URL, status=429, headers={"X-RateLimit-Reset": "1700000007"})
        mocked.post(URL, payload=user_json)
        async with make_client(clock) as client:
            client._engine.pacer.wall_clock = lambda: 1_700_000_000.0
            start = clock.now
            await client.users.add_phone("u", PHONE)
        assert 7.0 <= clock.now - start <= 7.8

    async def test_http_date(self, mocked, clock, user_json):
        """Retry-After as an HTTP-date; a date in the past means now."""
        now = 1_700_000_000.0
        future = format_datetime(datetime.fromtimestamp(now + 9, UTC), usegmt=True)
        past = format_datetime(datetime.fromtimestamp(now - 9, UTC), usegmt=True)
        mocked.post(URL, status=429, headers={"Retry-After": future})
        mocked.post(URL, status=429, headers={"Retry-After": past})
        mocked.post(URL, payload=user_json)
        async with make_client(clock) as client:
            client._engine.pacer.wall_clock = lambda: now
            await client.users.add_phone("u", PHONE)
        assert 9.0 == clock.sleeps[0]
        assert 3 == sent(mocked)

    async def test_over_the_cap_raises_at_once(self, mocked, clock):
        """A wait above max_retry_after raises RateLimitError immediately, with retry_after."""
        mocked.post(URL, status=429, headers={"Retry-After": "61"})
        async with make_client(clock) as client:
            with pytest.raises(errors.RateLimitError) as info:
                await client.users.add_phone("u", PHONE)
        assert (61.0, 1, []) == (info.value.retry_after, info.value.attempts, clock.sleeps)

    async def test_beyond_the_deadline_raises_at_once(self, mocked, clock):
        """A wait longer than the remaining deadline raises RateLimitError immediately."""
        mocked.post(URL, status=429, headers={"Retry-After": "30"})
        async with make_client(clock, deadline=10.0) as client:
            with pytest.raises(errors.RateLimitError) as info:
                await client.users.add_phone("u", PHONE)
        assert 30.0 == info.value.retry_after
        assert [] == clock.sleeps

    async def test_garbage_retry_after_backs_off(self, mocked, clock, user_json):
        """An unreadable Retry-After falls back to a per-call backoff."""
        mocked.post(URL, status=429, headers={"Retry-After": "soon"})
        mocked.post(URL, payload=user_json)
        async with make_client(clock, rng=TopOfRange()) as client:
            await client.users.add_phone("u", PHONE)
        assert [0.5] == clock.sleeps

    async def test_throttles_do_not_count_as_attempts(self, mocked, clock, user_json):
        """429 re-sends are not failures: they succeed even with retries disabled."""
        for _ in range(5):
            mocked.post(URL, status=429, headers={"Retry-After": "1"})
        mocked.post(URL, payload=user_json)
        async with make_client(clock, retry=RetryPolicy.none()) as client:
            await client.users.add_phone("u", PHONE)
        assert 6 == sent(mocked)

    async def test_permanent_throttling_ends(self, mocked, clock):
        """A tenant that always answers 429 ends in RateLimitError at the deadline."""
        mocked.post(URL, status=429, headers={"Retry-After": "1"}, repeat=True)
        async with make_client(clock, deadline=20.0) as client:
            with pytest.raises(errors.RateLimitError):
                await client.users.add_phone("u", PHONE)
        assert sent(mocked) <= 21

    async def test_gate_is_shared(self, mocked, clock, user_json):
        """While one call waits out a 429, no other call of the client sends."""
        times: list[float] = []

        def record(url, **kwargs):
            times.append(clock.now)

        mocked.post(URL, status=429, headers={"Retry-After": "2"}, callback=record)
        mocked.post(URL, payload=user_json, repeat=True, callback=record)
        async with make_client(clock) as client:
            await asyncio.gather(*(client.users.add_phone("u", PHONE) for _ in range(10)))
        assert 11 == len(times)
        assert 1 == sum(1 for t in times if t < 1002.0)

    async def test_stated_waits_do_not_teach_a_rate(self, mocked, clock, user_json):
        """429s that state their wait pause at the gate but leave the client's rate unlimited."""
        mocked.post(URL, status=429, headers={"Retry-After": "0.05"})
        mocked.post(URL, status=429, headers={"Retry-After": "0.05"})
        mocked.post(URL, payload=user_json, repeat=True)
        async with make_client(clock) as client:
            start = clock.now
            await asyncio.gather(*(client.users.add_phone("u", PHONE) for _ in range(5)))
            assert client._engine.pacer.adaptive.rate is None
        assert clock.now - start < 0.2

    async def test_silent_429s_teach_a_rate(self, mocked, clock, user_json):
        """429s without any stated wait make the client learn a rate."""
        mocked.post(URL, status=429)
        mocked.post(URL, payload=user_json, repeat=True)
        async with make_client(clock) as client:
            await client.users.add_phone("u", PHONE)
            assert client._engine.pacer.adaptive.rate is not None

    async def test_announced_rate_and_burst_are_followed(self, mocked, clock, user_json):
        """A rate announced in headers paces the client at 99% of it, sized to its burst."""
        headers = {"RateLimit-Limit": "300", "RateLimit-Policy": "300;w=1;burst=30"}
        mocked.post(URL, payload=user_json, headers=headers, repeat=True)
        async with make_client(clock) as client:
            await client.users.add_phone("u", PHONE)
            adaptive = client._engine.pacer.adaptive
            assert (297.0, 30.0) == (adaptive.rate, adaptive._bucket.burst)
            assert not client._engine.pacer.learning

    async def test_remaining_zero_holds_sends(self, mocked, clock, user_json):
        """A success saying nothing remains holds the next send until its reset."""
        mocked.post(
            URL, payload=user_json, headers={"RateLimit-Remaining": "0", "RateLimit-Reset": "3"}
        )
        mocked.post(URL, payload=user_json)
        async with make_client(clock) as client:
            await client.users.add_phone("u", PHONE)
            start = clock.now
            await client.users.add_phone("u", PHONE)
        assert clock.now - start >= 3.0


@pytest.mark.asyncio
class TestReconciliation:
    async def test_ambiguous_then_duplicate_returns_the_user(
        self, mocked, client, user_json, caplog
    ):
        """A disconnect then a duplicate 422 reads the user back and returns it."""
        caplog.set_level("INFO", logger="monocloud_async")
        mocked.post(URL, exception=aiohttp.ServerDisconnectedError())
        mocked.post(URL, status=422, body=duplicate_body(), headers=PROBLEM)
        mocked.get(USER_URL, payload=with_phone(user_json))
        user = await client.users.add_phone("u", PHONE)
        assert user.has_phone(PHONE)
        assert "earlier attempt took effect" in caplog.text
        assert PHONE not in caplog.text

    @pytest.mark.parametrize("status", [409, 422])
    async def test_ambiguous_then_conflict_without_phone_raises(
        self, mocked, client, user_json, status
    ):
        """If the read-back lacks the number, the 4xx is raised with every attempt counted."""
        mocked.post(URL, status=500)
        mocked.post(URL, status=status, body=duplicate_body(), headers=PROBLEM)
        mocked.get(USER_URL, payload=user_json)
        with pytest.raises(errors.APIError) as info:
            await client.users.add_phone("u", PHONE)
        assert (status, 3) == (info.value.status, info.value.attempts)

    async def test_not_sent_then_duplicate_raises_without_read_back(self, mocked, client):
        """After a failure that certainly did not arrive, a 422 is just raised."""
        mocked.post(URL, exception=connector_error())
        mocked.post(URL, status=422, body=duplicate_body(), headers=PROBLEM)
        with pytest.raises(errors.UnprocessableEntityError):
            await client.users.add_phone("u", PHONE)
        assert 0 == sent(mocked, "GET", USER_URL)

    async def test_exist_ok(self, mocked, client, user_json):
        """exist_ok turns a duplicate answer into the current user."""
        mocked.post(URL, status=422, body=duplicate_body(), headers=PROBLEM)
        mocked.get(USER_URL, payload=with_phone(user_json))
        user = await client.users.add_phone("u", PHONE, exist_ok=True)
        assert user.has_phone(PHONE)

    async def test_exist_ok_ignores_validation_errors(self, mocked, client):
        """exist_ok does not hide a 422 that is not a duplicate."""
        body = json.dumps(
            {
                "type": "https://httpstatuses.io/422#validation-error",
                "status": 422,
                "errors": {"phone_number": ["bad"]},
            }
        )
        mocked.post(URL, status=422, body=body, headers=PROBLEM)
        with pytest.raises(errors.UnprocessableEntityError):
            await client.users.add_phone("u", PHONE, exist_ok=True)
        assert 0 == sent(mocked, "GET", USER_URL)


@pytest.mark.asyncio
class TestBudgetAndCancellation:
    async def test_outage_costs_about_one_attempt_per_call(self, mocked, clock):
        """With every request failing, the retry budget keeps attempts near one per call."""
        mocked.post(URL, status=503, repeat=True)
        async with make_client(clock, retry=RetryPolicy(retry_budget=(20.0, 0.1))) as client:
            for _ in range(200):
                with pytest.raises(errors.ServerError):
                    await client.users.add_phone("u", PHONE)
        assert sent(mocked) <= 1.1 * 200

    async def test_budget_recovers_after_successes(self, mocked, clock, user_json):
        """Successes refill the budget so retries resume."""
        async with make_client(clock, retry=RetryPolicy(retry_budget=(10.0, 1.0))) as client:
            mocked.post(URL, status=503, repeat=True)
            for _ in range(10):
                with pytest.raises(errors.ServerError):
                    await client.users.add_phone("u", PHONE)
            mocked.clear()
            mocked.post(URL, payload=user_json, repeat=True)
            for _ in range(10):
                await client.users.add_phone("u", PHONE)
            mocked.clear()
            mocked.post(URL, status=503)
            mocked.post(URL, payload=user_json)
            before = sent(mocked)
            await client.users.add_phone("u", PHONE)
        assert 2 == sent(mocked) - before

    async def test_cancel_mid_backoff(self, mocked, user_json):
        """Cancelling during a backoff returns at once with CancelledError, nothing swallowed."""
        parked = asyncio.Event()

        async def park(seconds: float) -> None:
            parked.set()
            await asyncio.Event().wait()

        mocked.post(URL, status=503)
        async with MonoCloudClient(DOMAIN, KEY, sleep=park) as client:
            task = asyncio.create_task(client.users.add_phone("u", PHONE))
            await parked.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert task.cancelled()
