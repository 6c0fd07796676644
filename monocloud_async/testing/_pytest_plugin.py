"""pytest plugin (entry point ``pytest11``) offering the fake API as fixtures.

- ``fake_monocloud``: a running `FakeMonoCloud`, closed after the test.
- ``monocloud_client``: a ``MonoCloudClient`` pointed at ``fake_monocloud``, closed after it.

Both are async fixtures and need pytest-asyncio; without it the plugin loads and defines none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from monocloud_async import MonoCloudClient
    from monocloud_async.testing import FakeMonoCloud

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover  (pytest-asyncio is a test dependency)
    _HAVE_PYTEST_ASYNCIO = False
else:
    _HAVE_PYTEST_ASYNCIO = True

if _HAVE_PYTEST_ASYNCIO:

    @pytest_asyncio.fixture(name="fake_monocloud")
    async def _fake_monocloud() -> AsyncIterator[FakeMonoCloud]:
        """A running `FakeMonoCloud` with the default key, closed after the test."""
        # Imported here so that merely having the plugin installed costs pytest nothing.
        from monocloud_async.testing import FakeMonoCloud  # noqa: PLC0415

        async with FakeMonoCloud() as fake:
            yield fake

    @pytest_asyncio.fixture(name="monocloud_client")
    async def _monocloud_client(fake_monocloud: FakeMonoCloud) -> AsyncIterator[MonoCloudClient]:
        """A ``MonoCloudClient`` talking to ``fake_monocloud``, closed after the test."""
        from monocloud_async import MonoCloudClient  # noqa: PLC0415 - as above

        async with MonoCloudClient(
            domain=fake_monocloud.domain, api_key=fake_monocloud.api_key
        ) as client:
            yield client
