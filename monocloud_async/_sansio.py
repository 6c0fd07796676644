"""The protocol without I/O: building requests, reading responses, parsing rate-limit headers.

Nothing here touches a socket or a clock of its own: callers pass ``now`` where time matters.
Headers are read through ``Mapping.get`` and must be case-insensitive (aiohttp's are; tests
use ``multidict.CIMultiDict``).
"""

from __future__ import annotations

import http
import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote, urlsplit

import attrs

from monocloud_async import errors
from monocloud_async._convert import loads, structure_problem, structure_user
from monocloud_async._redact import mask_phone, redact
from monocloud_async.models import IdentityError, ProblemDetails, User

_E164: Final = re.compile(r"\+[1-9][0-9]{1,14}")  # [0-9]: \d also matches non-ASCII digits
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
# Ids made only of these characters need no percent-encoding (the common case, fast path).
_PLAIN_ID: Final = re.compile(r"[A-Za-z0-9_\-]+")
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
_EXCERPT_CHARS: Final = 200
_EPOCH_THRESHOLD: Final = 86_400.0
_VALIDATION_ERROR: Final = "#validation-error"
_IDENTITY_ERROR: Final = "#identity-validation-error"
_JSON_BOOL: Final = {True: "true", False: "false"}
DUPLICATE_CODES: Final = frozenset({"DuplicatePhoneNumber", "DuplicatePhone"})

_ERROR_CLASSES: Final[Mapping[int, type[errors.APIError]]] = {
    400: errors.BadRequestError,
    401: errors.UnauthorizedError,
    402: errors.PaymentRequiredError,
    403: errors.ForbiddenError,
    404: errors.NotFoundError,
    409: errors.ConflictError,
    422: errors.UnprocessableEntityError,
    429: errors.RateLimitError,
}


# --- configuration -----------------------------------------------------------------------


def api_base(domain: str) -> str:
    """Turn a configured domain into the API base URL (``https://host/api/``).

    A bare host gets ``https://``; ``http://`` is accepted only for loopback hosts, so a key is
    never sent in clear text over a network.
    """
    if not isinstance(domain, str):
        raise errors.ConfigurationError(f"domain must be a string, got {type(domain).__name__}")
    text = domain.strip()
    if "://" not in text:
        text = "https://" + text
    text = text.rstrip("/")
    if not text.partition("://")[2]:
        raise errors.ConfigurationError("domain is empty")
    if _CONTROL.search(text) or any(ch.isspace() for ch in text):
        raise errors.ConfigurationError("domain contains whitespace or control characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise errors.ConfigurationError(f"domain is not a valid host or URL: {exc}") from exc
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in {"http", "https"}:
        raise errors.ConfigurationError(f"domain scheme must be https (got {scheme!r})")
    if not host:
        raise errors.ConfigurationError("domain has no host")
    if parts.username is not None or parts.password is not None:
        raise errors.ConfigurationError("domain must not contain credentials")
    if parts.path.rstrip("/") not in {"", "/api"} or parts.query or parts.fragment:
        raise errors.ConfigurationError(
            "domain must be a host or an origin URL, without a path, query or fragment"
        )
    if scheme == "http" and not is_loopback(host):
        raise errors.ConfigurationError(
            f"http:// is only allowed for loopback hosts; use https://{parts.netloc}"
        )
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc = f"{netloc}:{port}"
    return f"{scheme}://{netloc}/api/"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_api_key(api_key: object) -> str:
    """Validate an API key: a non-empty string without control characters (header injection)."""
    if not isinstance(api_key, str):
        raise errors.ConfigurationError(f"api_key must be a string, got {type(api_key).__name__}")
    if not api_key.strip():
        raise errors.ConfigurationError("api_key is empty")
    if _CONTROL.search(api_key):
        raise errors.ConfigurationError("api_key contains control characters (CR, LF, ...)")
    if not api_key.isascii():
        raise errors.ConfigurationError("api_key must be ASCII")
    return api_key


def default_headers(api_key: str, user_agent: str) -> dict[str, str]:
    """Headers sent with every request."""
    return {
        "X-API-Key": api_key,
        "Accept": "application/json, application/problem+json",
        "User-Agent": user_agent,
    }


# --- requests ----------------------------------------------------------------------------


@attrs.frozen
class Request:
    """A request ready to send.

    Attributes:
        method: HTTP method.
        path: Path below the API base, already percent-encoded (``users/abc/phones``).
        body: The JSON body as bytes, or None.
        operation: A short name for logs and events (``add_phone``).
        phone_number: The phone number the request adds, if any (never logged in full).
    """

    method: str
    path: str
    body: bytes | None = attrs.field(default=None, repr=False)
    operation: str = ""
    phone_number: str | None = attrs.field(default=None, repr=mask_phone)


def encode_user_id(user_id: object) -> str:
    """Percent-encode ``user_id`` as exactly one path segment, rejecting ``''``, ``.``, ``..``."""
    if not isinstance(user_id, str):
        raise errors.InvalidRequestError(f"user_id must be a string, got {type(user_id).__name__}")
    if user_id in {"", ".", ".."}:
        raise errors.InvalidRequestError(
            f"user_id {user_id!r} is not a valid user id (it would change the request path)"
        )
    if _PLAIN_ID.fullmatch(user_id):
        return user_id
    return quote(user_id, safe="")


def check_phone_number(phone_number: object) -> str:
    """Validate E.164: ``+`` then 2 to 15 digits, the first not 0."""
    if not isinstance(phone_number, str):
        raise errors.InvalidRequestError(
            f"phone_number must be a string, got {type(phone_number).__name__}"
        )
    if _E164.fullmatch(phone_number) is None:
        raise errors.InvalidRequestError(
            "phone_number must be in E.164 form ('+' then 2 to 15 digits, the first not 0), "
            f"got {mask_phone(phone_number)} ({len(phone_number)} characters)"
        )
    return phone_number


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise errors.InvalidRequestError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def add_phone_request(
    user_id: object,
    phone_number: object,
    *,
    is_verified: object = False,
    skip_restriction_checks: object = False,
) -> Request:
    """Build ``POST users/{user_id}/phones``, validating every argument first."""
    segment = encode_user_id(user_id)
    phone = check_phone_number(phone_number)
    verified = _check_bool("is_verified", is_verified)
    skip = _check_bool("skip_restriction_checks", skip_restriction_checks)
    # A validated E.164 number is '+' and ASCII digits: nothing in it needs JSON escaping, so
    # a template gives the same bytes as json.dumps at a twentieth of the cost.
    body = (
        f'{{"phone_number":"{phone}","is_verified":{_JSON_BOOL[verified]},'
        f'"skip_restriction_checks":{_JSON_BOOL[skip]}}}'
    )
    return Request(
        method="POST",
        path=f"users/{segment}/phones",
        body=body.encode("ascii"),
        operation="add_phone",
        phone_number=phone,
    )


def get_user_request(user_id: object) -> Request:
    """Build ``GET users/{user_id}``."""
    return Request(method="GET", path=f"users/{encode_user_id(user_id)}", operation="get_user")


# --- responses ---------------------------------------------------------------------------


def request_id_of(headers: Mapping[str, str], problem: ProblemDetails | None = None) -> str | None:
    """The server's id for a response: ``X-Request-Id``, ``traceparent`` or ``traceId``."""
    rid = headers.get("X-Request-Id") or headers.get("traceparent")
    if rid:
        return rid
    if problem is not None:
        trace = problem.extensions.get("traceId")
        if isinstance(trace, str) and trace:
            return trace
    return None


def read_user(status: int, headers: Mapping[str, str], body: bytes) -> User:
    """Turn a response into a ``User``, or raise the matching error."""
    if not 200 <= status < 300:  # noqa: PLR2004 - the 2xx range
        raise api_error(status, headers, body)
    try:
        return structure_user(loads(body))
    except Exception as exc:
        raise errors.ResponseDecodeError(
            f"the {status} response is not a valid User: {_decode_detail(exc)}",
            status=status,
            request_id=request_id_of(headers),
        ) from exc


def _decode_detail(exc: BaseException) -> str:
    if isinstance(exc, ValueError) and not isinstance(exc, TypeError):
        return "body is not JSON"
    leaves: list[str] = []
    _collect_leaves(exc, leaves)
    return redact("; ".join(leaves[:3])) or type(exc).__name__


def _collect_leaves(exc: BaseException, out: list[str]) -> None:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            _collect_leaves(sub, out)
        return
    note = next(iter(getattr(exc, "__notes__", []) or []), "")
    out.append(f"{note.removeprefix('Structuring class ')}: {exc}" if note else str(exc))


def api_error(
    status: int, headers: Mapping[str, str], body: bytes, *, attempts: int = 0
) -> errors.APIError:
    """Build the ``APIError`` subclass matching ``status`` from a non-2xx response."""
    problem = _parse_problem(headers, body)
    cls = _ERROR_CLASSES.get(status)
    if cls is None:
        cls = errors.ServerError if 500 <= status < 600 else errors.APIError  # noqa: PLR2004
    request_id = request_id_of(headers, problem)
    # Server text may echo the phone number; the request id (hex) must stay readable.
    summary = redact(_summary(problem, body))
    message = f"{status} {_phrase(status)}: {summary}" if summary else f"{status} {_phrase(status)}"
    if request_id:
        message += f" (request id {request_id})"
    kwargs: dict[str, Any] = {
        "status": status,
        "problem": problem,
        "headers": headers,
        "request_id": request_id,
        "attempts": attempts,
    }
    if cls is errors.UnprocessableEntityError:
        kwargs["errors"] = _problem_errors(problem)
    elif cls is errors.RateLimitError:
        kwargs["retry_after"] = parse_retry_after(headers.get("Retry-After"))
    return cls(message, **kwargs)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _parse_problem(headers: Mapping[str, str], body: bytes) -> ProblemDetails | None:
    ctype = headers.get("Content-Type", "").lower()
    if not body or "json" not in ctype:
        return None
    try:
        doc = loads(body)
    except ValueError:
        return None
    if not isinstance(doc, dict) or not any(k in doc for k in ("type", "title", "status")):
        return None
    return structure_problem(doc)


def _problem_errors(
    problem: ProblemDetails | None,
) -> Mapping[str, list[str]] | list[IdentityError] | None:
    if problem is None:
        return None
    raw = problem.extensions.get("errors")
    if isinstance(raw, dict):
        return {
            str(field): [str(m) for m in msgs] if isinstance(msgs, list) else [str(msgs)]
            for field, msgs in raw.items()
        }
    if isinstance(raw, list):
        return [
            IdentityError(code=str(e.get("code", "")), description=str(e.get("description", "")))
            for e in raw
            if isinstance(e, dict)
        ]
    return None


def _summary(problem: ProblemDetails | None, body: bytes) -> str:
    if problem is not None:
        parts = [problem.detail or problem.title or ""]
        found = _problem_errors(problem)
        if isinstance(found, list) and found:
            parts.append("[" + ", ".join(e.code for e in found) + "]")
        elif isinstance(found, Mapping) and found:
            parts.append(
                "[" + "; ".join(f"{k}: {' '.join(v)}" for k, v in list(found.items())[:5]) + "]"
            )
        return " ".join(p for p in parts if p)
    if not body:
        return "(empty body)"
    return _excerpt(body)


def _excerpt(body: bytes) -> str:
    text = body[: _EXCERPT_CHARS * 8].decode("utf-8", errors="replace")
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", text, flags=re.DOTALL | re.IGNORECASE)
    text = re.sub(r"<[^>]*>", " ", text)
    text = " ".join(text.split())
    if len(text) > _EXCERPT_CHARS:
        text = text[: _EXCERPT_CHARS - 1] + "…"
    return text


# --- rate-limit headers ------------------------------------------------------------------


@attrs.frozen
class RateLimitInfo:
    """What a response said about the tenant's rate limit (all fields optional).

    Attributes:
        limit: Requests allowed per window.
        remaining: Requests left in the current window.
        reset: Seconds until the window resets (or the quota refills).
        window: The policy window in seconds (``w=``), when announced.
        burst: The burst the server allows (``burst=`` in ``RateLimit-Policy``), if announced.
    """

    limit: float | None = None
    remaining: float | None = None
    reset: float | None = None
    window: float | None = None
    burst: float | None = None

    @property
    def rate(self) -> float | None:
        """The announced rate in requests per second, when limit and window are both known."""
        if self.limit is None or not self.window:
            return None
        return self.limit / self.window

    @property
    def empty(self) -> bool:
        """True when the response carried no rate-limit information at all."""
        return self.limit is None and self.remaining is None and self.reset is None


NO_RATE_LIMIT_INFO: Final = RateLimitInfo()


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date.

    ``now`` is the current epoch time (needed for dates; ``time.time()`` is the caller's job).
    A date in the past gives 0; garbage or a negative number gives None.
    """
    if value is None:
        return None
    text = value.strip()
    seconds = _number(text)
    if seconds is not None:
        return seconds if seconds >= 0 else None
    if now is None:
        return None
    try:
        from email.utils import parsedate_to_datetime  # noqa: PLC0415 - rare, costly import

        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _leading_number(text: str | None) -> float | None:
    # Older drafts allow "100, 100;w=60": the first item is the one in force.
    if text is None:
        return None
    return _number(text.split(",", 1)[0].split(";", 1)[0].strip().strip('"'))


def _reset_seconds(value: float | None, now: float | None) -> float | None:
    if value is None or value < 0:
        return None
    if value > _EPOCH_THRESHOLD:
        return None if now is None else max(0.0, value - now)
    return value


def _params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in text.split(";")[1:]:
        key, sep, val = part.partition("=")
        if sep:
            params[key.strip().lower()] = val.strip().strip('"')
    return params


def parse_rate_limit(headers: Mapping[str, str], now: float | None = None) -> RateLimitInfo:
    """Read ``RateLimit-*``, ``X-RateLimit-*``, ``RateLimit`` and ``RateLimit-Policy`` fields.

    ``now`` is the current epoch time, used when a reset is an epoch timestamp (> 86400).
    """
    limit = _leading_number(headers.get("RateLimit-Limit") or headers.get("X-RateLimit-Limit"))
    remaining = _leading_number(
        headers.get("RateLimit-Remaining") or headers.get("X-RateLimit-Remaining")
    )
    reset = _reset_seconds(
        _leading_number(headers.get("RateLimit-Reset") or headers.get("X-RateLimit-Reset")), now
    )
    window = burst = None
    policy = headers.get("RateLimit-Policy")
    if policy:
        first = policy.split(",", 1)[0]
        params = _params(first)
        window = _number(params.get("w", ""))
        burst = _number(params.get("burst", ""))
        quota = _number(params["q"]) if "q" in params else _leading_number(first)
        if limit is None:
            limit = quota
    combined = headers.get("RateLimit")
    if combined:
        params = _params(combined.split(",", 1)[0])
        if "r" in params:
            remaining = _number(params["r"])
        if "t" in params:
            reset = _reset_seconds(_number(params["t"]), now)
    if limit is None and remaining is None and reset is None:
        return NO_RATE_LIMIT_INFO
    return RateLimitInfo(limit=limit, remaining=remaining, reset=reset, window=window, burst=burst)
