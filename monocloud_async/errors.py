"""Every error monocloud-async raises.

::

    MonoCloudError
    ├── ConfigurationError (also ValueError)
    ├── InvalidRequestError (also ValueError)     bad input caught before any I/O
    ├── TransportError                            chained to the aiohttp/OS error
    │   ├── MonoCloudConnectionError (also ConnectionError)
    │   └── MonoCloudTimeoutError (also TimeoutError)
    ├── ResponseDecodeError                       a 2xx whose body is not a valid User
    └── APIError                                  .status .problem .headers .request_id
        ├── BadRequestError 400
        ├── UnauthorizedError 401
        ├── PaymentRequiredError 402
        ├── ForbiddenError 403
        ├── NotFoundError 404
        ├── ConflictError 409
        ├── UnprocessableEntityError 422          .errors
        ├── RateLimitError 429                    .retry_after
        └── ServerError 5xx

Every error keeps its message in ``args`` and its details as attributes, so errors pickle
and compare by what they say. No message ever contains the API key or a full phone number.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monocloud_async.models import IdentityError, ProblemDetails

__all__ = [
    "APIError",
    "BadRequestError",
    "ConfigurationError",
    "ConflictError",
    "ForbiddenError",
    "InvalidRequestError",
    "MonoCloudConnectionError",
    "MonoCloudError",
    "MonoCloudTimeoutError",
    "NotFoundError",
    "PaymentRequiredError",
    "RateLimitError",
    "ResponseDecodeError",
    "ServerError",
    "TransportError",
    "UnauthorizedError",
    "UnprocessableEntityError",
]


class MonoCloudError(Exception):
    """Base class of every error raised by monocloud-async.

    Attributes:
        attempts: How many requests were sent for the call that failed (0 when the error was
            raised before any I/O).
    """

    attempts: int

    def __init__(self, message: str, *, attempts: int = 0) -> None:
        super().__init__(message)
        self.attempts = attempts

    @property
    def message(self) -> str:
        """The human-readable message."""
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only details live in __dict__; restore them after the positional message.
        return (self.__class__, self.args, dict(self.__dict__))


class ConfigurationError(MonoCloudError, ValueError):
    """The client was configured with missing or invalid settings."""


class InvalidRequestError(MonoCloudError, ValueError):
    """An argument was rejected before any request was sent (nothing was lost or sent)."""


class TransportError(MonoCloudError):
    """The request could not be completed at the network level.

    The underlying aiohttp or OS error is chained as ``__cause__``.

    Attributes:
        maybe_sent: True when the request may have reached the server (for example a read
            timeout or a disconnect after the request was written).
        retryable: False when another attempt cannot help (a TLS certificate failure).
    """

    maybe_sent: bool
    retryable: bool

    def __init__(
        self,
        message: str,
        *,
        attempts: int = 0,
        maybe_sent: bool = True,
        retryable: bool = True,
    ) -> None:
        super().__init__(message, attempts=attempts)
        self.maybe_sent = maybe_sent
        self.retryable = retryable


class MonoCloudConnectionError(TransportError, ConnectionError):
    """The connection failed: DNS, refused, reset, TLS, or the server hung up."""


class MonoCloudTimeoutError(TransportError, TimeoutError):
    """The request did not complete within the client's ``timeout``."""


class ResponseDecodeError(MonoCloudError):
    """A successful (2xx) response whose body is not the expected JSON document.

    The decoding error (JSON or cattrs) is chained as ``__cause__``.

    Attributes:
        status: The HTTP status of the response.
        request_id: The server's request id, when it sent one.
    """

    status: int
    request_id: str | None

    def __init__(
        self,
        message: str,
        *,
        status: int = 200,
        request_id: str | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message, attempts=attempts)
        self.status = status
        self.request_id = request_id


class APIError(MonoCloudError):
    """The API answered with an error status.

    The class is chosen by the HTTP status; statuses without a class of their own raise
    ``APIError`` itself.

    Attributes:
        status: The HTTP status code.
        problem: The RFC 9457 problem details when the body was ``problem+json``, else None.
        headers: The response headers (case-insensitive as received).
        request_id: ``X-Request-Id``, ``traceparent``, or the problem's ``traceId``, if any.
    """

    status: int
    problem: ProblemDetails | None
    headers: Mapping[str, str]
    request_id: str | None

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        problem: ProblemDetails | None = None,
        headers: Mapping[str, str] | None = None,
        request_id: str | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message, attempts=attempts)
        self.status = status
        self.problem = problem
        self.headers = headers if headers is not None else {}
        self.request_id = request_id

    def __reduce__(self) -> tuple[Any, ...]:
        # Response header views from aiohttp do not pickle; a plain dict keeps the values.
        state = dict(self.__dict__)
        state["headers"] = dict(self.headers)
        return (self.__class__, self.args, state)


class BadRequestError(APIError):
    """400: the request was malformed."""


class UnauthorizedError(APIError):
    """401: the API key is missing, wrong or revoked."""


class PaymentRequiredError(APIError):
    """402: the tenant's plan does not allow the operation."""


class ForbiddenError(APIError):
    """403: the API key may not perform the operation."""


class NotFoundError(APIError):
    """404: the user (or other resource) does not exist."""


class ConflictError(APIError):
    """409: the request conflicts with the resource's current state."""


class UnprocessableEntityError(APIError):
    """422: the request was understood but rejected.

    Attributes:
        errors: For ``validation-error`` problems, a mapping of field name to messages; for
            ``identity-validation-error`` problems, a list of ``IdentityError``; else None.
    """

    errors: Mapping[str, list[str]] | list[IdentityError] | None

    def __init__(
        self,
        message: str,
        *,
        errors: Mapping[str, list[str]] | list[IdentityError] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.errors = errors


class RateLimitError(APIError):
    """429: the tenant's rate limit was hit and waiting it out was not possible.

    Attributes:
        retry_after: Seconds the server asked to wait, or None when it did not say.
    """

    retry_after: float | None

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(APIError):
    """5xx: the server failed."""
