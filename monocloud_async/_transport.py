"""The HTTP edge: the only module that imports aiohttp.

It owns (or borrows) the pooled ``aiohttp.ClientSession``, sends one prepared request, and
translates every aiohttp/OS exception into ours in a single place, always chained.
"""

from __future__ import annotations

import functools
import platform
import ssl as _ssl
from collections.abc import Mapping
from typing import Any, Final

import aiohttp
import attrs
import yarl

from monocloud_async import errors
from monocloud_async._sansio import Request

__all__ = ["Transport", "user_agent"]

_DNS_CACHE_SECONDS: Final = 300
_KEEPALIVE_SECONDS: Final = 30.0
_TIMEOUT_CACHE: Final = 8

Response = tuple[int, Mapping[str, str], bytes]


@functools.cache
def user_agent() -> str:
    """``monocloud-async/<version> Python/<version> aiohttp/<version>``."""
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        ours = version("monocloud-async")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        ours = "0+unknown"
    return (
        f"monocloud-async/{ours} Python/{platform.python_version()} aiohttp/{aiohttp.__version__}"
    )


@attrs.define(eq=False)
class Transport:
    """Sends prepared requests over a pooled aiohttp session.

    Without an injected ``session`` it creates its own lazily, inside the running loop, on
    first use, and closes it in ``aclose()``. An injected session is never closed.
    """

    base_url: str
    headers: Mapping[str, str] = attrs.field(repr=False)
    max_connections: int = 100
    ssl: _ssl.SSLContext | bool | None = None
    session: aiohttp.ClientSession | None = attrs.field(default=None, repr=False)
    _owns_session: bool = attrs.field(init=False, default=False)
    _body_headers: dict[str, str] = attrs.field(init=False, repr=False)
    _request_options: dict[str, Any] = attrs.field(init=False, repr=False)
    # Most attempts use the client's own timeout; deadline-trimmed ones vary, hence the cap.
    _timeouts: dict[float, aiohttp.ClientTimeout] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self._body_headers = {**self.headers, "Content-Type": "application/json"}
        # An injected session keeps its connector's TLS settings unless ssl= was given.
        self._request_options = {} if self.ssl is None else {"ssl": self.ssl}

    @property
    def owns_open_session(self) -> bool:
        """Whether a session we created is still open (used for the unclosed warning)."""
        return self._owns_session and self.session is not None and not self.session.closed

    def _get_session(self) -> aiohttp.ClientSession:
        session = self.session
        if session is None:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections,
                limit_per_host=0,
                ttl_dns_cache=_DNS_CACHE_SECONDS,
                keepalive_timeout=_KEEPALIVE_SECONDS,
                ssl=True if self.ssl is None else self.ssl,
            )
            session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
            self.session = session
            self._owns_session = True
        return session

    async def send(self, request: Request, timeout: float) -> Response:  # noqa: ASYNC109
        """Send ``request`` once and return ``(status, headers, body)``.

        ``timeout`` bounds this attempt (connecting, waiting for a pooled connection, sending
        and reading the whole body). Redirects are never followed, so the key never travels
        to another origin.

        Raises:
            MonoCloudConnectionError: the connection failed (``maybe_sent`` tells whether the
                request may have reached the server).
            MonoCloudTimeoutError: the attempt ran out of time.
        """
        session = self._get_session()
        url = self.base_url + request.path
        headers = self.headers if request.body is None else self._body_headers
        client_timeout = self._timeouts.get(timeout)
        if client_timeout is None:
            client_timeout = aiohttp.ClientTimeout(total=timeout, connect=timeout)
            if len(self._timeouts) < _TIMEOUT_CACHE:
                self._timeouts[timeout] = client_timeout
        try:
            async with session.request(
                request.method,
                # The path is percent-encoded already: spare yarl a second quoting pass.
                yarl.URL(url, encoded=True),
                data=request.body,
                headers=headers,
                allow_redirects=False,
                timeout=client_timeout,
                **self._request_options,
            ) as resp:
                body = await resp.read()
                return resp.status, resp.headers, body
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise translate(exc, url) from exc

    async def aclose(self) -> None:
        """Close the session if we created it; an injected session is left open."""
        session, self.session = self.session, None
        if self._owns_session and session is not None:
            self._owns_session = False
            await session.close()


def translate(exc: BaseException, url: str) -> errors.TransportError:
    """Map an aiohttp/OS exception to ours, most specific first.

    ``maybe_sent`` is False only when the request certainly never left (DNS, refused, connect
    timeout, waiting for a pooled connection); ``retryable`` is False for TLS verification
    failures, which another attempt cannot fix.
    """
    origin = url.split("/api/", 1)[0]
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return errors.MonoCloudTimeoutError(
            f"timed out connecting to {origin} (or waiting for a pooled connection)",
            maybe_sent=False,
        )
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError):
        return errors.MonoCloudConnectionError(
            f"TLS handshake with {origin} failed: {detail}", maybe_sent=False, retryable=False
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return errors.MonoCloudConnectionError(
            f"cannot connect to {origin}: {detail}", maybe_sent=False
        )
    if isinstance(exc, TimeoutError):
        return errors.MonoCloudTimeoutError(
            f"timed out waiting for {origin} to respond", maybe_sent=True
        )
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return errors.MonoCloudConnectionError(
            f"{origin} closed the connection without a response", maybe_sent=True
        )
    if isinstance(exc, aiohttp.ClientPayloadError):
        return errors.MonoCloudConnectionError(
            f"the response from {origin} was cut short: {detail}", maybe_sent=True
        )
    if isinstance(exc, aiohttp.InvalidURL):
        return errors.MonoCloudConnectionError(
            f"invalid URL for {origin}", maybe_sent=False, retryable=False
        )
    return errors.MonoCloudConnectionError(
        f"connection to {origin} failed: {type(exc).__name__}: {detail}", maybe_sent=True
    )
