"""A fake MonoCloud Management API served over real HTTP on 127.0.0.1.

The module has a pure core and a thin aiohttp edge:

- the core (``_dispatch`` and its helpers, ``_TokenBucket``, ``_FaultPlan``, ``_new_user``) turns
  a request into a reply and knows nothing about sockets;
- the edge (`FakeMonoCloud`) reads requests, records them, applies the rate limit, latency and
  faults, and writes replies or drops connections.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hmac
import http
import json
import math
import operator
import random
import re
import string
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Final, NoReturn, Self, TypeVar, overload
from urllib.parse import unquote

import attrs
from aiohttp import web

if TYPE_CHECKING:
    from types import TracebackType

    from multidict import CIMultiDictProxy

__all__ = ["FakeMonoCloud", "FakeStats", "RecordedRequest"]

_T = TypeVar("_T")

_HOST: Final = "127.0.0.1"
# In-flight handlers are woken and their connections dropped on close, so this only bounds a
# handler stuck elsewhere (a client trickling its body); it keeps aclose() short regardless.
_SHUTDOWN_TIMEOUT: Final = 0.5

_E164: Final = re.compile(r"\+[1-9][0-9]{1,14}")
_ID_ALPHABET: Final = string.ascii_letters + string.digits
_TYPE_PREFIX: Final = "https://httpstatuses.io/"
_VALIDATION_TYPE: Final = _TYPE_PREFIX + "422#validation-error"
_IDENTITY_TYPE: Final = _TYPE_PREFIX + "422#identity-validation-error"
_JSON: Final = "application/json"
_PROBLEM_JSON: Final = "application/problem+json"


# --------------------------------------------------------------------------------------------
# What tests read: recorded requests and counters


class _Headers(dict[str, str]):
    """A plain dict of header fields with lower-cased names and case-insensitive lookups."""

    __slots__ = ()

    @classmethod
    def of(cls, fields: CIMultiDictProxy[str]) -> _Headers:
        """Copy *fields*, joining repeated names with ", " as RFC 9110 allows."""
        headers = cls()
        for name, value in fields.items():
            key = name.lower()
            previous = dict.get(headers, key)
            dict.__setitem__(headers, key, value if previous is None else f"{previous}, {value}")
        return headers

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)

    @overload
    def get(self, key: str, default: None = None, /) -> str | None: ...
    @overload
    def get(self, key: str, default: str, /) -> str: ...
    @overload
    def get(self, key: str, default: _T, /) -> str | _T: ...
    def get(self, key: str, default: object = None, /) -> object:
        """Return the value of header *key* (any case), or *default*."""
        return super().get(key.lower(), default)


@attrs.frozen
class RecordedRequest:
    """One request as the fake received it.

    Attributes:
        method: The HTTP method, e.g. ``"POST"``.
        path: The request target exactly as sent: still percent-encoded, query included.
        headers: A ``dict`` of the request's header fields. Names are stored lower-cased and
            lookups ignore case (``headers["X-API-Key"]`` works whatever the client sent);
            repeated fields are joined with ``", "``.
        json: The parsed JSON body, or ``None`` when the body is empty or not JSON.
        time: When the request arrived, on the `time.monotonic` clock.
    """

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    time: float


@attrs.define
class FakeStats:
    """Counters of what a `FakeMonoCloud` has served since it was created (or `reset`).

    Attributes:
        requests: Requests received, whatever their outcome.
        rate_limited: 429 answers given by the rate limiter (not those injected by `fail_next`).
        failures: Error answers injected by `FakeMonoCloud.fail_next` or a fail rate.
        disconnects: Connections dropped by `FakeMonoCloud.disconnect_next` or a disconnect rate.
        in_flight: Requests being handled right now, delay included.
        max_in_flight: The most requests that were ever in flight at once.
    """

    requests: int = 0
    rate_limited: int = 0
    failures: int = 0
    disconnects: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    def reset(self) -> None:
        """Zero the totals; `max_in_flight` restarts from what is in flight now."""
        self.requests = self.rate_limited = self.failures = self.disconnects = 0
        self.max_in_flight = self.in_flight


# --------------------------------------------------------------------------------------------
# Realistic users

_GIVEN_NAMES: Final = (
    "Aiko", "Amara", "Ana", "Arjun", "Chen", "Diego", "Elif", "Fatima",
    "Hana", "Isabel", "Jonas", "Kofi", "Lena", "Mateo", "Noah", "Olga",
    "Priya", "Ravi", "Sofia", "Tomas", "Wei", "Yusuf", "Zara", "Lucas",
)  # fmt: skip
_FAMILY_NAMES: Final = (
    "Almeida", "Becker", "Chowdhury", "Dubois", "Eriksson", "Fernandez", "Garcia", "Haddad",
    "Ivanova", "Jensen", "Kim", "Kowalski", "Mensah", "Nakamura", "Okafor", "Patel",
    "Rossi", "Schmidt", "Silva", "Tanaka", "Novak", "Wang", "Yilmaz", "Smith",
)  # fmt: skip
_PLACES: Final = (
    ("New York", "United States", "US"),
    ("London", "United Kingdom", "GB"),
    ("Mumbai", "India", "IN"),
    ("Berlin", "Germany", "DE"),
    ("Sao Paulo", "Brazil", "BR"),
    ("Tokyo", "Japan", "JP"),
    ("Lagos", "Nigeria", "NG"),
    ("Sydney", "Australia", "AU"),
)
_DEVICES: Final = ("iPhone 15 Pro", "Pixel 8", "MacBook Pro", "YubiKey 5", "Windows Hello")
_USER_AGENTS: Final = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:127.0) Gecko/20100101 Firefox/127.0",
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36"
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
        "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
    ),
)
_DAY: Final = 86_400


def _short_id(rng: random.Random) -> str:
    """A 21-character URL-safe id like the service's ``UOtBaOybB6dTpIJNrnkRw``."""
    return "".join(rng.choices(_ID_ALPHABET, k=21))


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _b64(rng: random.Random, size: int, *, url: bool = False) -> str:
    raw = rng.randbytes(size)
    if url:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return base64.b64encode(raw).decode()


def _new_user(rng: random.Random, user_id: str | None, now: int) -> dict[str, Any]:
    """Build a user shaped like the service's example response, drawing ids from *rng*."""
    uid = _short_id(rng) if user_id is None else user_id
    given, family = rng.choice(_GIVEN_NAMES), rng.choice(_FAMILY_NAMES)
    number = rng.randint(1, 9999)
    email = f"{given}.{family}{number}@example.com".lower()
    city, country, region = rng.choice(_PLACES)
    created = now - rng.randint(30 * _DAY, 1000 * _DAY)
    # Every later timestamp falls between creation and now, as on a real account.
    later = sorted(rng.randint(created, now) for _ in range(4))
    successes = rng.randint(1, 200)
    failures = rng.randint(0, 3)
    full_name = f"{given} {family}"
    return {
        "user_id": uid,
        "disabled": False,
        "connections": [{"idp": "monocloud", "connection_id": _short_id(rng)}],
        "claims": {"name": full_name, "given_name": given, "family_name": family},
        "public_data": {"send_emails": rng.random() < 0.5},  # noqa: PLR2004
        "private_data": {"subscription_plan": rng.choice(("free", "standard", "premium"))},
        "emails": [
            {
                "id": _uuid4(rng),
                "email": email,
                "primary": True,
                "verified": True,
                "source": "monocloud",
                "verification_source": "monocloud",
            }
        ],
        "phone_numbers": [],
        "passkeys": [
            {
                "passkey_id": _b64(rng, 32, url=True),
                "public_key": _b64(rng, 91),
                "aa_guid": _uuid4(rng),
                "backup_state": True,
                "backup_eligibility": True,
                "user_present": True,
                "user_verified": True,
                "user_agent": rng.choice(_USER_AGENTS),
                "name": rng.choice(_DEVICES),
            }
        ],
        "force_password_reset": False,
        "external_providers": [
            {
                "authenticator": "google",
                "provider_user_id": _uuid4(rng),
                "claims": {"email": email, "email_verified": "true", "name": full_name},
            }
        ],
        "creation_time": created,
        "last_updated": later[3],
        "username": {
            "id": _uuid4(rng),
            "username": f"{given}{family}{number}".lower(),
            "source": "monocloud",
        },
        "has_password": True,
        "password_updated_at": later[0],
        "block_until": None,
        "failure_count": failures,
        "last_sign_in_attempt": later[2],
        "last_sign_in_success": later[1],
        "last_activity": later[3],
        "last_sign_in_attempt_ip": f"203.0.113.{rng.randint(1, 254)}",
        "last_sign_in_success_ip": f"198.51.100.{rng.randint(1, 254)}",
        "last_known_city": city,
        "last_known_country": country,
        "last_known_region": region,
        "sign_in_attempts_count": successes + failures + rng.randint(0, 5),
        "sign_in_success_count": successes,
    }


# --------------------------------------------------------------------------------------------
# The API's semantics (pure)


@attrs.frozen
class _Reply:
    status: int
    body: Mapping[str, Any]
    content_type: str = _JSON
    headers: Mapping[str, str] = attrs.Factory(dict)


@attrs.frozen
class _Call:
    method: str
    path: str
    body: Any
    request_id: str
    trace_id: str
    rng: random.Random


class _NotJSON:
    """The body of a request that is empty or not JSON (distinct from a JSON ``null``)."""

    def __repr__(self) -> str:
        return "<not JSON>"


_NOT_JSON: Final = _NotJSON()


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return _NOT_JSON
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _title(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _problem(
    call: _Call,
    status: int,
    detail: str,
    *,
    type_: str | None = None,
    title: str | None = None,
    errors: object = None,
    headers: Mapping[str, str] | None = None,
) -> _Reply:
    """An RFC 9457 problem, with the members and ``traceId`` extension the service sends."""
    body: dict[str, Any] = {
        "type": type_ or f"{_TYPE_PREFIX}{status}",
        "title": title or _title(status),
        "status": status,
        "detail": detail,
        "instance": call.path,
    }
    if errors is not None:
        body["errors"] = errors
    body["traceId"] = call.trace_id
    return _Reply(status, body, _PROBLEM_JSON, headers or {})


def _authenticate(call: _Call, expected: str, given: str | None) -> _Reply | None:
    if given is None:
        return _problem(call, 401, "The X-API-Key header is missing.")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return _problem(call, 401, "The API key is not valid.")
    return None


def _validate_add_phone(body: Any) -> dict[str, list[str]]:
    """Field -> messages for an add-phone body, as the service's validation-error lists them."""
    if not isinstance(body, dict):
        return {"body": ["The request body must be a JSON object."]}
    errors: dict[str, list[str]] = {}
    phone = body.get("phone_number")
    if phone is None:
        errors["phone_number"] = ["The phone_number field is required."]
    elif not isinstance(phone, str):
        errors["phone_number"] = ["The phone_number field must be a string."]
    elif _E164.fullmatch(phone) is None:
        errors["phone_number"] = ["The phone_number field must be an E.164 phone number."]
    for flag in ("is_verified", "skip_restriction_checks"):
        if flag in body and not isinstance(body[flag], bool):
            errors[flag] = [f"The {flag} field must be a boolean."]
    return errors


def _touch(user: dict[str, Any]) -> None:
    user["last_updated"] = int(time.time())


def _get_user(_call: _Call, user: dict[str, Any], _phone: dict[str, Any] | None) -> _Reply:
    return _Reply(200, user)


def _add_phone(call: _Call, user: dict[str, Any], _phone: dict[str, Any] | None) -> _Reply:
    errors = _validate_add_phone(call.body)
    if errors:
        return _problem(
            call,
            422,
            "One or more fields are not valid; see errors.",
            type_=_VALIDATION_TYPE,
            title="One or more validation errors occurred.",
            errors=errors,
        )
    number: str = call.body["phone_number"]
    phones: list[dict[str, Any]] = user["phone_numbers"]
    if any(entry.get("phone") == number for entry in phones):
        duplicate = {
            "code": "DuplicatePhoneNumber",
            "description": f"Phone number '{number}' is already added to the user.",
        }
        return _problem(
            call,
            422,
            "The identity could not be updated; see errors.",
            type_=_IDENTITY_TYPE,
            title="One or more identity validation errors occurred.",
            errors=[duplicate],
        )
    verified = call.body.get("is_verified", False)
    phones.append(
        {
            "id": _uuid4(call.rng),
            "phone": number,
            "primary": not phones,
            "verified": verified,
            "source": "monocloud",
            "verification_source": "monocloud" if verified else None,
        }
    )
    _touch(user)
    return _Reply(200, user)


def _change_phone(
    action: Callable[[list[dict[str, Any]], dict[str, Any]], None],
) -> Callable[[_Call, dict[str, Any], dict[str, Any] | None], _Reply]:
    """Wrap a mutation of one phone entry into an endpoint that answers with the User."""

    def endpoint(_call: _Call, user: dict[str, Any], phone: dict[str, Any] | None) -> _Reply:
        if phone is not None:  # pragma: no branch  (the router always resolves it)
            action(user["phone_numbers"], phone)
            _touch(user)
        return _Reply(200, user)

    return endpoint


def _remove(phones: list[dict[str, Any]], phone: dict[str, Any]) -> None:
    phones.remove(phone)
    # A user with phones keeps exactly one primary, as the service does.
    if phone.get("primary") and phones:
        phones[0]["primary"] = True


def _make_primary(phones: list[dict[str, Any]], phone: dict[str, Any]) -> None:
    for entry in phones:
        entry["primary"] = entry is phone


def _verify(_phones: list[dict[str, Any]], phone: dict[str, Any]) -> None:
    phone["verified"] = True
    phone["verification_source"] = "monocloud"


def _unverify(_phones: list[dict[str, Any]], phone: dict[str, Any]) -> None:
    phone["verified"] = False
    phone["verification_source"] = None


_USER: Final = "{user_id}"
_PHONE: Final = "{identifier_id}"
_Endpoint = Callable[[_Call, dict[str, Any], dict[str, Any] | None], _Reply]
_ROUTES: Final[tuple[tuple[str, tuple[str, ...], _Endpoint], ...]] = (
    ("GET", ("api", "users", _USER), _get_user),
    ("POST", ("api", "users", _USER, "phones"), _add_phone),
    ("DELETE", ("api", "users", _USER, "phones", _PHONE), _change_phone(_remove)),
    ("POST", ("api", "users", _USER, "phones", _PHONE, "primary"), _change_phone(_make_primary)),
    ("POST", ("api", "users", _USER, "phones", _PHONE, "verify"), _change_phone(_verify)),
    ("POST", ("api", "users", _USER, "phones", _PHONE, "unverify"), _change_phone(_unverify)),
)


def _segments(raw_path: str) -> list[str]:
    """Split a percent-encoded path into segments, resolving dot segments as servers do.

    Segments stay encoded so an id holding ``/`` cannot change the route; ``.`` and ``..``
    (also percent-encoded) are resolved, so a client that forgets to escape a user id of ``..``
    reaches another path, as it would on the real service.
    """
    resolved: list[str] = []
    for segment in raw_path.split("/")[1:]:
        plain = unquote(segment)
        if plain == "..":
            if resolved:
                resolved.pop()
        elif plain != ".":
            resolved.append(segment)
    return resolved


def _match(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    params: dict[str, str] = {}
    for expected, segment in zip(pattern, segments, strict=True):
        if expected in {_USER, _PHONE}:
            if not segment:
                return None
            params[expected] = unquote(segment)
        elif expected != segment:
            return None
    return params


def _dispatch(call: _Call, users: dict[str, dict[str, Any]]) -> _Reply:
    """Answer an authenticated request the way the service would."""
    segments = _segments(call.path)
    allowed: list[str] = []
    for method, pattern, endpoint in _ROUTES:
        params = _match(pattern, segments)
        if params is None:
            continue
        if method != call.method:
            allowed.append(method)
            continue
        user_id = params[_USER]
        user = users.get(user_id)
        if user is None:
            return _problem(call, 404, f"User '{user_id}' was not found.")
        phone = None
        if _PHONE in params:
            phone_id = params[_PHONE]
            phones: list[dict[str, Any]] = user["phone_numbers"]
            phone = next((entry for entry in phones if entry.get("id") == phone_id), None)
            if phone is None:
                return _problem(call, 404, f"Phone number '{phone_id}' was not found.")
        return endpoint(call, user, phone)
    if allowed:
        detail = f"{call.method} is not allowed here."
        return _problem(call, 405, detail, headers={"Allow": ", ".join(allowed)})
    return _problem(call, 404, "No endpoint matches this path.")


# --------------------------------------------------------------------------------------------
# Rate limit and faults (pure)


def _format_number(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


@attrs.frozen
class _RateDecision:
    admitted: bool
    remaining: int
    reset: int
    retry_after: int


@attrs.define
class _TokenBucket:
    """A token bucket read at the times it is given, so it is exact under test."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, now: float) -> _RateDecision:
        self.refill(now)
        admitted = self.tokens >= 1
        if admitted:
            self.tokens -= 1
        # Whole seconds rounded up, as real services send them: a client pacing itself exactly
        # at the limit should meet the same one-second stalls here as in production.
        return _RateDecision(
            admitted=admitted,
            remaining=math.floor(self.tokens),
            reset=math.ceil((self.burst - self.tokens) / self.rate),
            retry_after=max(1, math.ceil((1 - self.tokens) / self.rate)),
        )

    def headers(self, decision: _RateDecision) -> dict[str, str]:
        remaining, reset = str(decision.remaining), str(decision.reset)
        return {
            "RateLimit-Limit": str(max(1, round(self.rate))),
            "RateLimit-Remaining": remaining,
            "RateLimit-Reset": reset,
            "RateLimit-Policy": (
                f"{_format_number(self.rate)};w=1;burst={_format_number(self.burst)}"
            ),
            "RateLimit": f'"default";r={remaining};t={reset}',
        }


@attrs.frozen
class _Fail:
    status: int
    retry_after: str | None


@attrs.frozen
class _Disconnect:
    after_commit: bool


_Fault = _Fail | _Disconnect


@attrs.define
class _Run:
    fault: _Fault
    left: int


@attrs.define
class _FaultPlan:
    """Scripted faults in the order they were armed, then seeded random ones."""

    scripted: deque[_Run] = attrs.Factory(deque)
    fail_rate: float = 0.0
    disconnect_rate: float = 0.0
    fail: _Fail = _Fail(503, None)
    disconnect: _Disconnect = _Disconnect(after_commit=False)

    def arm(self, fault: _Fault, n: int) -> None:
        if n:
            self.scripted.append(_Run(fault, n))

    def draw(self, rng: random.Random) -> _Fault | None:
        if self.scripted:
            run = self.scripted[0]
            run.left -= 1
            if not run.left:
                self.scripted.popleft()
            return run.fault
        if not (self.fail_rate or self.disconnect_rate):
            return None
        # Exactly one draw per request while any rate is set, so a seed replays the same
        # sequence of outcomes whatever the rates are.
        draw = rng.random()
        if draw < self.fail_rate:
            return self.fail
        if draw < self.fail_rate + self.disconnect_rate:
            return self.disconnect
        return None


def _check_status(status: int) -> int:
    status = operator.index(status)
    if not 400 <= status <= 599:  # noqa: PLR2004
        raise ValueError(f"status must be an HTTP error status (400-599), not {status}")
    return status


def _check_count(n: int) -> int:
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    return n


def _check_rate(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, not {value}")
    return value


def _retry_after_value(retry_after: float | str | None) -> str | None:
    if retry_after is None:
        return None
    if isinstance(retry_after, str):
        if not retry_after.isprintable():
            raise ValueError(f"retry_after must be a printable header value, not {retry_after!r}")
        return retry_after
    seconds = float(retry_after)
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"retry_after must be a number of seconds >= 0, not {retry_after!r}")
    return _format_number(seconds)


# --------------------------------------------------------------------------------------------
# The aiohttp edge


def _drop_connection(request: web.BaseRequest) -> NoReturn:
    """Close the connection without answering, like a crashed peer or a lost response."""
    if request.transport is not None:
        request.transport.close()
    # aiohttp writes an HTTPException as the response; on the closed transport that write fails
    # with ConnectionError, which aiohttp takes as a premature client disconnect and logs at
    # DEBUG only. Any other exception would be logged as an unhandled error and answered 500.
    raise web.HTTPServiceUnavailable


def _response(reply: _Reply, headers: dict[str, str]) -> web.Response:
    headers.update(reply.headers)
    body = json.dumps(reply.body, ensure_ascii=False, separators=(",", ":")).encode()
    return web.Response(
        status=reply.status,
        body=body,
        content_type=reply.content_type,
        charset="utf-8",
        headers=headers,
    )


@attrs.define(repr=False)
class FakeMonoCloud:
    """A fake MonoCloud Management API on ``http://127.0.0.1:<port>``, for tests and demos.

    Use it as an async context manager (or ``await start()`` / ``await aclose()``)::

        async with FakeMonoCloud() as fake:
            user_id = fake.add_user()
            async with MonoCloudClient(domain=fake.domain, api_key=fake.api_key) as client:
                await client.users.add_phone(user_id, "+919988776655")

    It serves ``GET /api/users/{user_id}``, ``POST /api/users/{user_id}/phones``,
    ``DELETE /api/users/{user_id}/phones/{identifier_id}`` and ``POST`` to that path's
    ``/primary``, ``/verify`` and ``/unverify``, all answering with the full User; errors are
    ``application/problem+json`` with a ``traceId`` member, and every response carries a unique
    ``X-Request-Id``.

    Each request passes, in arrival order: the rate limiter (`rate_limit`), then the faults
    (`fail_next`, `disconnect_next`, `set_fault_rates`; a request the limiter refuses uses up
    no fault), then the `delay`, then the API itself (``X-API-Key`` check, routing, validation).

    Args:
        api_key: The key clients must send in ``X-API-Key``.
        seed: Seeds every random choice (ids, generated users, random faults, request ids), so
            a run replays identically for the same seed and the same requests.
        port: The port to listen on; 0 picks a free one.
        record_requests: Append every request to `requests`; turn off for long benchmarks.
        clock: The monotonic clock of the rate limiter and of `RecordedRequest.time`; a test
            can speed time up for the fake and the client alike (pass the client the same
            clock and a matching ``sleep``).

    Attributes:
        users: ``user_id`` -> the stored User JSON object; edit it freely to set up a test.
        requests: The `RecordedRequest` of each request received, in arrival order.
        stats: `FakeStats` counters.
    """

    api_key: str = "test-key"
    seed: int = attrs.field(default=0, kw_only=True)
    port: int = attrs.field(default=0, kw_only=True)
    record_requests: bool = attrs.field(default=True, kw_only=True)
    clock: Callable[[], float] = attrs.field(default=time.monotonic, kw_only=True)
    users: dict[str, dict[str, Any]] = attrs.field(init=False, factory=dict)
    requests: list[RecordedRequest] = attrs.field(init=False, factory=list)
    stats: FakeStats = attrs.field(init=False, factory=FakeStats)
    # Separate generators keep each stream reproducible whatever the others draw.
    _data_rng: random.Random = attrs.field(init=False)
    _fault_rng: random.Random = attrs.field(init=False)
    _trace_rng: random.Random = attrs.field(init=False)
    _faults: _FaultPlan = attrs.field(init=False, factory=_FaultPlan)
    _bucket: _TokenBucket | None = attrs.field(init=False, default=None)
    _rate_headers: bool = attrs.field(init=False, default=True)
    _latency: float = attrs.field(init=False, default=0.0)
    _runner: web.AppRunner | None = attrs.field(init=False, default=None)
    _bound_port: int = attrs.field(init=False, default=0)
    _closing: asyncio.Event = attrs.field(init=False, factory=asyncio.Event)

    def __attrs_post_init__(self) -> None:
        # String seeds hash with SHA-512, so they are stable across processes.
        self._data_rng = random.Random(f"monocloud-fake/data/{self.seed}")  # noqa: S311
        self._fault_rng = random.Random(f"monocloud-fake/faults/{self.seed}")  # noqa: S311
        self._trace_rng = random.Random(f"monocloud-fake/traces/{self.seed}")  # noqa: S311

    def __repr__(self) -> str:
        where = f"http://{_HOST}:{self._bound_port}" if self._runner else "not running"
        return f"<FakeMonoCloud {where} users={len(self.users)}>"

    def __del__(self) -> None:
        if self._runner is not None:
            warnings.warn(
                f"{self!r} was never closed; use `async with` or `await aclose()`",
                ResourceWarning,
                stacklevel=1,
            )

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start serving; a server that is already running raises `RuntimeError`."""
        if self._runner is not None:
            raise RuntimeError("FakeMonoCloud is already running")
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            site = web.TCPSite(runner, _HOST, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        # A fresh event per run: an asyncio.Event binds to the loop that first waits on it.
        self._closing = asyncio.Event()
        self._runner = runner
        self._bound_port = runner.addresses[0][1]

    async def aclose(self) -> None:
        """Stop serving, dropping the connections of requests still in flight; idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def domain(self) -> str:
        """The base URL for ``MonoCloudClient(domain=...)``: ``http://127.0.0.1:PORT``."""
        if self._runner is None:
            raise RuntimeError("FakeMonoCloud is not running; use `async with` or `await start()`")
        return f"http://{_HOST}:{self._bound_port}"

    # -- state ----------------------------------------------------------------------------------

    def add_user(self, user_id: str | None = None, **fields: Any) -> str:
        """Store a realistic user and return its id.

        The user has every field of the service's User with plausible values (a random
        21-character id unless *user_id* is given, UUIDs for identifiers, an email, claims, a
        username, a passkey) and no phone numbers. *fields* replace top-level fields, or add
        unknown ones to test tolerant decoding.
        """
        if user_id == "":
            raise ValueError("user_id must not be empty")
        if user_id is not None and user_id in self.users:
            raise ValueError(f"a user with id {user_id!r} already exists")
        user = _new_user(self._data_rng, user_id, int(time.time()))
        user.update(copy.deepcopy(fields))
        uid: str = user_id or user["user_id"]
        user["user_id"] = uid
        self.users[uid] = user
        return uid

    # -- faults and limits ------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 503, retry_after: float | str | None = None) -> None:
        """Answer the next *n* requests with a problem+json error of *status*.

        *retry_after* (seconds, or an HTTP-date string) is sent as ``Retry-After``. Faults
        queue up in the order they are armed, across `fail_next` and `disconnect_next`.
        """
        fault = _Fail(_check_status(status), _retry_after_value(retry_after))
        self._faults.arm(fault, _check_count(n))

    def disconnect_next(self, n: int, after_commit: bool = False) -> None:
        """Close the connection of the next *n* requests without any response.

        With *after_commit* the request takes effect first (a phone is stored) and only the
        response is lost, which is what makes retrying a non-idempotent call ambiguous.
        """
        self._faults.arm(_Disconnect(after_commit=after_commit), _check_count(n))

    def set_fault_rates(
        self,
        fail_rate: float = 0.0,
        disconnect_rate: float = 0.0,
        status: int = 503,
        *,
        after_commit: bool = False,
    ) -> None:
        """Fail or drop each request at random with these probabilities (seeded; 0 clears).

        Failures answer *status*; disconnects drop the connection, after storing the phone if
        *after_commit*. Scripted faults (`fail_next`, `disconnect_next`) take precedence.
        """
        fail_rate = _check_rate("fail_rate", fail_rate)
        disconnect_rate = _check_rate("disconnect_rate", disconnect_rate)
        if fail_rate + disconnect_rate > 1.0:
            raise ValueError("fail_rate + disconnect_rate must not exceed 1")
        plan = self._faults
        plan.fail_rate, plan.disconnect_rate = fail_rate, disconnect_rate
        plan.fail = _Fail(_check_status(status), None)
        plan.disconnect = _Disconnect(after_commit=after_commit)

    def delay(self, seconds: float) -> None:
        """Add *seconds* of latency to every request from now on; 0 removes it."""
        seconds = float(seconds)
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"seconds must be a finite number >= 0, not {seconds}")
        self._latency = seconds

    def rate_limit(
        self, rate: float | None, burst: float | None = None, *, headers: bool = True
    ) -> None:
        """Limit requests to *rate* per second with a token bucket of *burst* tokens.

        *burst* defaults to a tenth of a second's worth, at least 1. Over the limit the answer
        is 429 with ``Retry-After`` in whole seconds (rounded up, at least 1). Every response
        then carries ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset``
        (seconds until the bucket is full), ``RateLimit-Policy: <rate>;w=1;burst=<burst>`` and
        ``RateLimit: "default";r=<remaining>;t=<reset>``; *headers=False* sends none of these
        nor ``Retry-After``, as many services do. ``rate_limit(None)`` removes the limit.
        Changing the limit while running keeps the tokens left, clipped to the new burst.
        """
        if rate is None:
            self._bucket = None
            return
        rate = float(rate)
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be a finite number > 0, not {rate}")
        burst = max(1.0, rate / 10) if burst is None else float(burst)
        if not (math.isfinite(burst) and burst >= 1):
            raise ValueError(f"burst must be a finite number >= 1, not {burst}")
        now = self.clock()
        tokens = burst
        if self._bucket is not None:
            self._bucket.refill(now)
            tokens = min(self._bucket.tokens, burst)
        self._bucket = _TokenBucket(rate=rate, burst=burst, tokens=tokens, updated=now)
        self._rate_headers = headers

    # -- serving ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        try:
            return await self._serve(request)
        finally:
            stats.in_flight -= 1

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        raw, too_large = await self._read(request)
        # No await from here to the delay, so requests take their place in the records, their
        # ids, rate-limit tokens and faults in one and the same arrival order.
        now = self.clock()
        call = self._arrive(request, raw, now)
        headers = {"X-Request-Id": call.request_id}
        decision = None
        if self._bucket is not None:
            decision = self._bucket.take(now)
            if self._rate_headers:
                headers.update(self._bucket.headers(decision))
        admitted = decision is None or decision.admitted
        fault = self._faults.draw(self._fault_rng) if admitted else None

        await self._wait(request)
        if isinstance(fault, _Disconnect) and not fault.after_commit:
            self.stats.disconnects += 1
            _drop_connection(request)
        reply = self._refuse(call, decision, fault) or self._answer(
            call, request.headers.get("X-API-Key"), too_large
        )
        if isinstance(fault, _Disconnect):
            self.stats.disconnects += 1
            _drop_connection(request)
        return _response(reply, headers)

    @staticmethod
    async def _read(request: web.Request) -> tuple[bytes, int | None]:
        """The body, or the error status aiohttp raised for it (too large a body)."""
        try:
            return await request.read(), None
        except ConnectionError:
            _drop_connection(request)
        except web.HTTPException as exc:
            # Answered as problem+json by _answer, like every other error.
            return b"", exc.status

    async def _wait(self, request: web.Request) -> None:
        """Sit out the latency; a server closing meanwhile drops the connection."""
        if self._latency:
            with suppress(TimeoutError):
                async with asyncio.timeout(self._latency):
                    await self._closing.wait()
        if self._closing.is_set():
            _drop_connection(request)

    def _refuse(
        self, call: _Call, decision: _RateDecision | None, fault: _Fault | None
    ) -> _Reply | None:
        """The 429 of the limiter or an injected failure, if either applies."""
        if decision is not None and not decision.admitted:
            self.stats.rate_limited += 1
            retry = {"Retry-After": str(decision.retry_after)} if self._rate_headers else {}
            return _problem(call, 429, "Too many requests; slow down.", headers=retry)
        if isinstance(fault, _Fail):
            self.stats.failures += 1
            retry = {} if fault.retry_after is None else {"Retry-After": fault.retry_after}
            return _problem(call, fault.status, "Fault injected by FakeMonoCloud.", headers=retry)
        return None

    def _arrive(self, request: web.Request, raw: bytes, now: float) -> _Call:
        """Count and record a request, and give it its ids."""
        body = _parse_json(raw)
        self.stats.requests += 1
        if self.record_requests:
            self.requests.append(
                RecordedRequest(
                    method=request.method,
                    path=request.raw_path,
                    headers=_Headers.of(request.headers),
                    json=None if body is _NOT_JSON else body,
                    time=now,
                )
            )
        request_id = f"{self._trace_rng.getrandbits(128):032x}"
        return _Call(
            method=request.method,
            path=request.rel_url.raw_path,
            body=body,
            request_id=request_id,
            # The W3C traceparent form ASP.NET services put in problem details.
            trace_id=f"00-{request_id}-{self._trace_rng.getrandbits(64):016x}-00",
            rng=self._data_rng,
        )

    def _answer(self, call: _Call, api_key: str | None, too_large: int | None) -> _Reply:
        """The API's own answer, once past the limiter and the faults."""
        denied = _authenticate(call, self.api_key, api_key)
        if denied is not None:
            return denied
        if too_large is not None:
            return _problem(call, too_large, "The request body is too large.")
        return _dispatch(call, self.users)
