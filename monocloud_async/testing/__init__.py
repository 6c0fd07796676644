"""Testing kit: a fake MonoCloud Management API served over real HTTP on 127.0.0.1.

::

    from monocloud_async.testing import FakeMonoCloud

    async with FakeMonoCloud() as fake:
        user_id = fake.add_user()
        fake.fail_next(1, status=503)
        ...  # point MonoCloudClient(domain=fake.domain, api_key=fake.api_key) at it

With pytest-asyncio installed, the fixtures ``fake_monocloud`` and ``monocloud_client`` come
with the package's pytest plugin.
"""

from __future__ import annotations

from monocloud_async.testing._fake import FakeMonoCloud, FakeStats, RecordedRequest

__all__ = ["FakeMonoCloud", "FakeStats", "RecordedRequest"]
