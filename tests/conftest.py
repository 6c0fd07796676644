"""Shared fixtures: the recorded example response and a deterministic fake clock."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aioresponses.core
import attrs
import pytest
import pytest_asyncio
from helpers import FAST

from monocloud_async import AttemptEvent, MonoCloudClient
from monocloud_async.testing import FakeMonoCloud

SAMPLES = pathlib.Path(__file__).parent / "samples"


class _NoUpload:
    output_size = 0


class _CompatResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.x predates aiohttp 3.14's required ``stream_writer`` argument."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _NoUpload())
        super().__init__(*args, **kwargs)


if "stream_writer" in aiohttp.ClientResponse.__init__.__code__.co_varnames:
    aioresponses.core.ClientResponse = _CompatResponse  # type: ignore[misc]


@pytest.fixture(name="user_json")
def _user_json() -> dict[str, Any]:
    """The endpoint documentation's example User, as parsed JSON."""
    return json.loads((SAMPLES / "user.json").read_text())


@pytest.fixture(name="user_bytes")
def _user_bytes() -> bytes:
    """The endpoint documentation's example User, as the raw response body."""
    return (SAMPLES / "user.json").read_bytes()


@pytest_asyncio.fixture(name="fake")
async def _fake() -> AsyncIterator[FakeMonoCloud]:
    """A running FakeMonoCloud (modules needing other settings define their own)."""
    async with FakeMonoCloud() as fake:
        yield fake


@pytest.fixture(name="events")
def _events() -> list[AttemptEvent]:
    """Collects the AttemptEvents of the ``client`` fixture."""
    return []


@pytest_asyncio.fixture(name="client")
async def _client(
    fake: FakeMonoCloud, events: list[AttemptEvent]
) -> AsyncIterator[MonoCloudClient]:
    """A MonoCloudClient on ``fake`` with short backoffs, recording its attempts."""
    async with MonoCloudClient(
        fake.domain, fake.api_key, retry=FAST, on_attempt=events.append
    ) as client:
        yield client


@pytest.fixture(name="user_id")
def _user_id(fake: FakeMonoCloud) -> str:
    """A user created on ``fake``."""
    return fake.add_user()


@attrs.define
class FakeClock:
    """Monotonic time that only moves when someone sleeps on it."""

    now: float = 1000.0
    sleeps: list[float] = attrs.Factory(list)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)


@pytest.fixture(name="clock")
def _clock() -> FakeClock:
    """A fake monotonic clock whose ``sleep`` advances it instantly."""
    return FakeClock()
