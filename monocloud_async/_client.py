"""``MonoCloudClient`` and its ``users`` resource."""

from __future__ import annotations

import asyncio
import math
import os
import random
import ssl as _ssl
import time
import warnings
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Self

from monocloud_async import errors
from monocloud_async._pacing import Pacer
from monocloud_async._retry import AttemptEvent, Engine, RetryPolicy
from monocloud_async._sansio import (
    add_phone_request,
    api_base,
    check_api_key,
    default_headers,
    get_user_request,
)
from monocloud_async._transport import Transport
from monocloud_async._transport import user_agent as _default_user_agent

if TYPE_CHECKING:
    from types import TracebackType

    import aiohttp

    from monocloud_async._bulk import BulkProgress, BulkRun, PhoneAssignment
    from monocloud_async._ratelimit import RateLimiter
    from monocloud_async.models import User

__all__ = ["MonoCloudClient", "Users"]


ENV_DOMAIN: Final = "MONOCLOUD_MANAGEMENT_DOMAIN"
ENV_API_KEY: Final = "MONOCLOUD_MANAGEMENT_API_KEY"
ENV_TIMEOUT: Final = "MONOCLOUD_MANAGEMENT_TIMEOUT"
DEFAULT_TIMEOUT: Final = 10.0


class _Unset:
    def __repr__(self) -> str:
        return "10.0"


_UNSET: Final = _Unset()


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise errors.ConfigurationError(f"{name} must be a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise errors.ConfigurationError(f"{name} must be a positive number of seconds")
    return float(value)


def _env_timeout() -> float:
    raw = os.environ.get(ENV_TIMEOUT)
    if raw is None or not raw.strip():
        return DEFAULT_TIMEOUT
    try:
        millis = float(raw)
    except ValueError:
        raise errors.ConfigurationError(
            f"{ENV_TIMEOUT} must be a number of milliseconds, got {raw!r}"
        ) from None
    if not math.isfinite(millis) or millis <= 0:
        raise errors.ConfigurationError(f"{ENV_TIMEOUT} must be a positive number of milliseconds")
    return millis / 1000


class MonoCloudClient:
    """An async client for the MonoCloud Management API.

    Use it as an async context manager, or call :meth:`aclose` when done. One client is safe
    for any number of concurrent calls from one event loop, and should be shared: its
    connection pool, 429 gate, learned rate and retry budget are per client.

    Args:
        domain: The tenant's domain (``acme.us.monocloud.com``, gets ``https://``) or an origin
            URL. ``http://`` only for loopback hosts. Falls back to
            ``MONOCLOUD_MANAGEMENT_DOMAIN``.
        api_key: Sent as ``X-API-Key``; never shown in reprs, logs or errors. Falls back to
            ``MONOCLOUD_MANAGEMENT_API_KEY``.
        timeout: Seconds per attempt (default 10, or ``MONOCLOUD_MANAGEMENT_TIMEOUT`` in ms).
        deadline: Seconds for one logical call, retries and waits included; None for none.
        retry: A ``RetryPolicy``; None for the default; ``RetryPolicy.none()`` disables retries.
        rate_limiter: Any object with ``async def acquire(self) -> None`` (e.g. ``TokenBucket``),
            shared by every call of this client.
        max_connections: Size of the connection pool the client creates.
        session: An ``aiohttp.ClientSession`` you own; the client never closes it.
        ssl: An ``ssl.SSLContext`` (e.g. for a private CA) passed to aiohttp.
        user_agent: Replaces the default ``User-Agent``.
        on_attempt: Called with an ``AttemptEvent`` after every request (metrics, tracing).
        clock: Monotonic clock for backoff, deadlines and pacing (tests inject a fake one).
        sleep: The coroutine used for every wait (tests inject a fake one).
        rng: Random source for jitter (seed it for reproducible runs).

    Raises:
        ConfigurationError: a setting is missing or invalid.
    """

    def __init__(
        self,
        domain: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | _Unset = _UNSET,
        deadline: float | None = 60.0,
        retry: RetryPolicy | None = None,
        rate_limiter: RateLimiter | None = None,
        max_connections: int = 100,
        session: aiohttp.ClientSession | None = None,
        ssl: _ssl.SSLContext | None = None,
        user_agent: str | None = None,
        on_attempt: Callable[[AttemptEvent], None] | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        domain = domain if domain is not None else os.environ.get(ENV_DOMAIN)
        api_key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
        if not domain:
            raise errors.ConfigurationError(f"no domain given and {ENV_DOMAIN} is not set")
        if not api_key:
            raise errors.ConfigurationError(f"no api_key given and {ENV_API_KEY} is not set")
        self._base_url = api_base(domain)
        key = check_api_key(api_key)
        per_attempt = _env_timeout() if isinstance(timeout, _Unset) else timeout
        self._timeout = _seconds("timeout", per_attempt)
        self._deadline = None if deadline is None else _seconds("deadline", deadline)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise errors.ConfigurationError("retry must be a RetryPolicy or None")
        if rate_limiter is not None and not callable(getattr(rate_limiter, "acquire", None)):
            raise errors.ConfigurationError("rate_limiter must have an async acquire() method")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise errors.ConfigurationError("max_connections must be an int")
        if max_connections < 1:
            raise errors.ConfigurationError("max_connections must be at least 1")
        if ssl is not None and not isinstance(ssl, _ssl.SSLContext):
            raise errors.ConfigurationError("ssl must be an ssl.SSLContext or None")
        agent = user_agent if user_agent is not None else _default_user_agent()
        if not isinstance(agent, str) or any(ord(c) < 32 or ord(c) == 127 for c in agent):  # noqa: PLR2004
            raise errors.ConfigurationError(
                "user_agent must be a string without control characters"
            )
        clock = clock or time.monotonic
        sleep = sleep or asyncio.sleep
        self._transport = Transport(
            base_url=self._base_url,
            headers=default_headers(key, agent),
            max_connections=max_connections,
            ssl=ssl,
            session=session,
        )
        self._policy = retry if retry is not None else RetryPolicy()
        self._engine = Engine(
            transport=self._transport,
            policy=self._policy,
            pacer=Pacer(clock=clock, sleep=sleep, limiter=rate_limiter),
            timeout=self._timeout,
            deadline=self._deadline,
            clock=clock,
            sleep=sleep,
            rng=rng or random.Random(),  # noqa: S311 - jitter, not cryptography
            on_attempt=on_attempt,
        )
        self._closed = False
        self.users: Users = Users(self)
        """Operations on users (``add_phone``, ``get_user``, ``add_phones``)."""

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<MonoCloudClient {self._base_url.removesuffix('/api/')}{state}>"

    @property
    def base_url(self) -> str:
        """The API base URL, e.g. ``https://acme.us.monocloud.com/api/``."""
        return self._base_url

    @property
    def timeout(self) -> float:
        """Seconds allowed per attempt."""
        return self._timeout

    @property
    def deadline(self) -> float | None:
        """Seconds allowed per logical call (None: unbounded)."""
        return self._deadline

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy in force."""
        return self._policy

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has been called."""
        return self._closed

    def _engine_for_call(self) -> Engine:
        if self._closed:
            raise RuntimeError("this MonoCloudClient is closed; create a new one to send requests")
        return self._engine

    async def aclose(self) -> None:
        """Close the connection pool the client created (an injected session is left open).

        A second call does nothing.
        """
        if self._closed:
            return
        self._closed = True
        await self._transport.aclose()

    async def __aenter__(self) -> Self:
        self._engine_for_call()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        transport = getattr(self, "_transport", None)
        if transport is not None and transport.owns_open_session:
            _warn(
                f"{self!r} was garbage-collected with its connection pool open; "
                "use 'async with MonoCloudClient(...)' or 'await client.aclose()'",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )


class Users:
    """User operations, available as ``client.users``."""

    __slots__ = ("_client",)

    def __init__(self, client: MonoCloudClient) -> None:
        self._client = client

    def __repr__(self) -> str:
        return f"<Users of {self._client!r}>"

    async def add_phone(
        self,
        user_id: str,
        phone_number: str,
        *,
        is_verified: bool = False,
        skip_restriction_checks: bool = False,
        exist_ok: bool = False,
    ) -> User:
        """Add a phone number to a user: ``POST /api/users/{user_id}/phones``.

        Args:
            user_id: The user's id (any string but ``''``, ``.`` and ``..``).
            phone_number: E.164: ``+`` then 2 to 15 digits, the first not 0.
            is_verified: Mark the number verified.
            skip_restriction_checks: Bypass the tenant's phone blocklist.
            exist_ok: Treat "the user already has this number" as success and return the
                current user (for at-least-once consumers and re-runs).

        Returns:
            The updated user.

        Raises:
            InvalidRequestError: an argument is invalid (nothing was sent).
            APIError: the API refused (a subclass per status), after retries where allowed.
            TransportError: the network failed on every attempt.
        """
        request = add_phone_request(
            user_id,
            phone_number,
            is_verified=is_verified,
            skip_restriction_checks=skip_restriction_checks,
        )
        user, _ = await self._client._engine_for_call().call(request, exist_ok=exist_ok)  # noqa: SLF001
        return user

    async def get_user(self, user_id: str) -> User:
        """Fetch a user: ``GET /api/users/{user_id}``.

        Raises:
            InvalidRequestError: ``user_id`` is invalid (nothing was sent).
            NotFoundError: no such user.
        """
        request = get_user_request(user_id)
        user, _ = await self._client._engine_for_call().call(request)  # noqa: SLF001
        return user

    def add_phones(
        self,
        items: Iterable[PhoneAssignment | tuple[str, str]]
        | AsyncIterable[PhoneAssignment | tuple[str, str]],
        *,
        concurrency: int = 16,
        exist_ok: bool = False,
        progress: BulkProgress | None = None,
    ) -> BulkRun:
        """Add phone numbers to many users in parallel; see ``BulkRun``.

        Args:
            items: ``PhoneAssignment`` objects or ``(user_id, phone_number)`` tuples, from any
                iterable or async iterable; pulled lazily (memory is O(concurrency)).
            concurrency: The most requests on the wire at once.
            exist_ok: As for :meth:`add_phone`.
            progress: An optional ``BulkProgress`` receiving each result as it completes.
        """
        from monocloud_async._bulk import BulkRun  # noqa: PLC0415 - keep import time low

        return BulkRun(
            self._client._engine_for_call(),  # noqa: SLF001
            items,
            concurrency=concurrency,
            exist_ok=exist_ok,
            progress=progress,
        )
