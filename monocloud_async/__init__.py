"""Async-first Python SDK for the MonoCloud Management API.

>>> async with MonoCloudClient(domain="acme.us.monocloud.com", api_key="...") as client:
...     user = await client.users.add_phone("UOtBaOybB6dTpIJNrnkRw", "+919988776655")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from monocloud_async._bulk import BulkProgress, BulkReport, BulkResult, BulkRun, PhoneAssignment
from monocloud_async._client import MonoCloudClient
from monocloud_async._ratelimit import TokenBucket
from monocloud_async._retry import AttemptEvent, RetryPolicy
from monocloud_async.errors import APIError, MonoCloudError, RateLimitError
from monocloud_async.models import User, UserPhone

if TYPE_CHECKING:
    from monocloud_async._redis import RedisRateLimiter

__all__ = [
    "APIError",
    "AttemptEvent",
    "BulkProgress",
    "BulkReport",
    "BulkResult",
    "BulkRun",
    "MonoCloudClient",
    "MonoCloudError",
    "PhoneAssignment",
    "RateLimitError",
    "RedisRateLimiter",
    "RetryPolicy",
    "TokenBucket",
    "User",
    "UserPhone",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # Both looked up lazily: package metadata and the redis module cost import time.
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415

        return version("monocloud-async")
    if name == "RedisRateLimiter":
        from monocloud_async._redis import RedisRateLimiter  # noqa: PLC0415

        return RedisRateLimiter
    raise AttributeError(f"module 'monocloud_async' has no attribute {name!r}")
