"""Bulk runs: laziness, bounds, one result per item, aborts and clean exits (over sockets)."""

from __future__ import annotations

import asyncio
import itertools
import pathlib
from collections import Counter

import pytest
import pytest_asyncio
from helpers import TopOfRange

import monocloud_async
from monocloud_async import (
    BulkReport,
    BulkResult,
    MonoCloudClient,
    PhoneAssignment,
    RetryPolicy,
    errors,
)
from monocloud_async.testing import FakeMonoCloud

FAST = RetryPolicy(initial_backoff=0.005, max_backoff=0.02)


def phone(i: int) -> str:
    return f"+1415555{i:04d}"


@pytest_asyncio.fixture(name="fake")
async def _fake():
    async with FakeMonoCloud(seed=3) as fake:
        yield fake


@pytest_asyncio.fixture(name="client")
async def _client(fake):
    async with MonoCloudClient(fake.domain, fake.api_key, retry=FAST) as client:
        yield client


def other_tasks() -> set[asyncio.Task[object]]:
    """The SDK's tasks still running (the fake server's own are not the SDK's business)."""
    sdk = pathlib.Path(monocloud_async.__file__).parent
    return {
        t
        for t in asyncio.all_tasks()
        if not t.done() and pathlib.Path(t.get_coro().cr_code.co_filename).parent == sdk  # type: ignore[union-attr]
    }


@pytest.mark.asyncio
class TestBulk:
    async def test_collect_totals(self, fake, client):
        """collect() returns one result per item with correct totals, invalid items included."""
        users = [fake.add_user() for _ in range(20)]
        items = [PhoneAssignment(u, phone(i)) for i, u in enumerate(users)]
        items += [("", phone(99)), (users[0], "12345"), ("missing-user", phone(98))]
        report = await client.users.add_phones(items, concurrency=4).collect()
        assert isinstance(report, BulkReport)
        assert (23, 20, 3) == (len(report.results), report.succeeded, report.failed)
        failures = {r.item.user_id: type(r.error) for r in report.results if not r.ok}
        assert {
            "": errors.InvalidRequestError,
            users[0]: errors.InvalidRequestError,
            "missing-user": errors.NotFoundError,
        } == failures
        invalid = [r for r in report.results if isinstance(r.error, errors.InvalidRequestError)]
        assert [0, 0] == [r.attempts for r in invalid]
        assert 21 == fake.stats.requests

    async def test_tuples_and_async_iterables(self, fake, client):
        """Items may be (user_id, phone) tuples from an async generator."""
        users = [fake.add_user() for _ in range(5)]

        async def gen():
            for i, u in enumerate(users):
                yield (u, phone(i))

        report = await client.users.add_phones(gen()).collect()
        assert 5 == report.succeeded
        assert all(isinstance(r.item, PhoneAssignment) for r in report.results)
        assert all(
            r.user is not None and r.user.has_phone(r.item.phone_number) for r in report.results
        )

    async def test_lazy_input(self, fake, client):
        """A million-item generator is pulled only about as far as results are consumed."""
        user = fake.add_user()
        pulled = 0

        def gen():
            nonlocal pulled
            for i in itertools.count():
                pulled += 1
                yield PhoneAssignment(user, phone(i % 10_000))
                if i >= 1_000_000:
                    return

        got = 0
        async with client.users.add_phones(gen(), concurrency=4) as run:
            async for _ in run:
                got += 1
                if got == 30:
                    break
        assert 30 <= pulled <= 30 + 2 * 4 + 2

    async def test_concurrency_bound(self, fake, client):
        """At most `concurrency` requests are on the wire at once."""
        fake.delay(0.01)
        users = [fake.add_user() for _ in range(60)]
        report = await client.users.add_phones(
            [(u, phone(i)) for i, u in enumerate(users)], concurrency=5
        ).collect()
        assert 60 == report.succeeded
        assert 5 == fake.stats.max_in_flight

    async def test_one_result_per_item_under_faults(self, fake, client):
        """Seeded 503s and disconnects: exactly one result per item, no duplicated phone."""
        fake.set_fault_rates(fail_rate=0.05, disconnect_rate=0.03)
        users = [fake.add_user() for _ in range(300)]
        items = [PhoneAssignment(u, phone(i)) for i, u in enumerate(users)]
        report = await client.users.add_phones(items, concurrency=16).collect()
        assert Counter(r.item for r in report.results) == Counter(items)
        assert 300 == report.succeeded
        assert all(1 == len(fake.users[u]["phone_numbers"]) for u in users)
        assert fake.stats.failures + fake.stats.disconnects > 0

    async def test_sleeping_holds_no_slot(self, fake):
        """Items waiting out a backoff do not keep other items from sending."""
        users = [fake.add_user() for _ in range(10)]
        fake.fail_next(2)
        slow = RetryPolicy(initial_backoff=0.3, max_backoff=0.3)
        async with MonoCloudClient(
            fake.domain, fake.api_key, retry=slow, rng=TopOfRange()
        ) as client:
            order = [
                r.attempts
                async for r in client.users.add_phones(
                    [(u, phone(i)) for i, u in enumerate(users)], concurrency=2
                )
            ]
        assert [1] * 8 + [2, 2] == order

    async def test_abort_on_unauthorized(self, fake):
        """A 401 aborts the run: the error is raised and nothing is left running."""
        users = [fake.add_user() for _ in range(50)]
        async with MonoCloudClient(fake.domain, "wrong-key") as client:
            run = client.users.add_phones(
                [(u, phone(i)) for i, u in enumerate(users)], concurrency=4
            )
            with pytest.raises(errors.UnauthorizedError):
                await run.collect()
            assert set() == other_tasks()
        assert fake.stats.requests < 50

    async def test_early_exit_leaves_nothing_running(self, fake, client):
        """Leaving the block early cancels in-flight work instead of waiting for it."""
        fake.delay(0.5)
        users = [fake.add_user() for _ in range(40)]
        items = [("", phone(0)), *((u, phone(i)) for i, u in enumerate(users))]
        async with client.users.add_phones(iter(items), concurrency=8) as run:
            first = await anext(run)
            async with asyncio.timeout(5):
                while fake.stats.in_flight < 8:  # noqa: ASYNC110 - the fake exposes a counter, not an event
                    await asyncio.sleep(0.005)
        assert isinstance(first.error, errors.InvalidRequestError)
        assert set() == other_tasks()
        assert fake.stats.in_flight > 0

    async def test_cancelling_the_consumer(self, fake, client):
        """Cancelling the task that iterates stops everything."""
        fake.delay(0.05)
        users = [fake.add_user() for _ in range(40)]
        started = asyncio.Event()

        async def consume():
            async with client.users.add_phones([(u, phone(i)) for i, u in enumerate(users)]) as run:
                async for _ in run:
                    started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert set() == other_tasks()

    async def test_progress_receives_every_result(self, fake, client):
        """A progress object's on_result sees each result once."""
        users = [fake.add_user() for _ in range(12)]
        seen: list[BulkResult] = []

        class Progress:
            def on_result(self, result: BulkResult) -> None:
                seen.append(result)

        report = await client.users.add_phones(
            [(u, phone(i)) for i, u in enumerate(users)], progress=Progress()
        ).collect()
        assert report.results == seen

    async def test_exist_ok(self, fake, client):
        """exist_ok makes re-running the same items succeed without new phones."""
        users = [fake.add_user() for _ in range(6)]
        items = [(u, phone(i)) for i, u in enumerate(users)]
        first = await client.users.add_phones(items).collect()
        again = await client.users.add_phones(items).collect()
        rerun = await client.users.add_phones(items, exist_ok=True).collect()
        assert (6, 0, 6) == (first.succeeded, again.succeeded, rerun.succeeded)
        assert all(1 == len(fake.users[u]["phone_numbers"]) for u in users)

    async def test_bad_arguments(self, client):
        """Bad concurrency or non-iterable items are rejected before anything runs."""
        with pytest.raises(errors.InvalidRequestError):
            client.users.add_phones([], concurrency=0)
        with pytest.raises(errors.InvalidRequestError):
            client.users.add_phones(42)  # type: ignore[arg-type]
