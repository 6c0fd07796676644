"""Async-first Python SDK for the MonoCloud Management API."""

from __future__ import annotations

from typing import Any

from monocloud_async.errors import APIError, MonoCloudError, RateLimitError

__all__ = ["APIError", "MonoCloudError", "RateLimitError", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415

        return version("monocloud-async")
    raise AttributeError(f"module 'monocloud_async' has no attribute {name!r}")
