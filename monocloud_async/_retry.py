"""Retries: the policy, the failure classification, and the engine that runs one logical call.

The only module that imports tenacity. One logical call is a sequence of tenacity attempts;
inside an attempt, 429 answers are waited out at the client's shared gate and re-sent without
counting toward ``max_attempts`` (a throttle is not a failure). Every wait takes the client's
injectable ``sleep`` and every decision its ``clock``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Literal

import attrs

from monocloud_async import errors
from monocloud_async._pacing import Pacer
from monocloud_async._ratelimit import RetryBudget
from monocloud_async._redact import mask_phone
from monocloud_async._sansio import (
    DUPLICATE_CODES,
    RateLimitInfo,
    Request,
    api_error,
    get_user_request,
    parse_retry_after,
    read_user,
    request_id_of,
)
from monocloud_async._transport import Transport
from monocloud_async.models import User

if TYPE_CHECKING:
    import tenacity as _tenacity

__all__ = ["AttemptEvent", "Engine", "RetryPolicy", "classify"]

# Children of the documented ``monocloud_async`` logger, so apps can silence one kind:
# per-request lines (DEBUG), retries (WARNING), reconciliations (INFO).
http_logger = logging.getLogger("monocloud_async.http")
retry_logger = logging.getLogger("monocloud_async.retry")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: Statuses that are retried. 500/502/504 may have been processed (reconciled on a later 409/422).
RETRY_STATUSES: Final = frozenset({500, 502, 503, 504})
AMBIGUOUS_STATUSES: Final = frozenset({500, 502, 504})
_MAX_THROTTLED_RESENDS: Final = 100


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not (isinstance(value, int | float) and math.isfinite(value) and ok):
        raise errors.ConfigurationError(f"RetryPolicy.{name} must be a positive number")


@attrs.frozen
class RetryPolicy:
    """How a client retries failed requests and waits out rate limits.

    Backoff before retry ``n`` (from 1) is full jitter:
    ``random(0, min(max_backoff, initial_backoff * 2 ** (n - 1)))``.

    Attributes:
        max_attempts: Attempts per call for failures (429 re-sends are not counted).
        initial_backoff: Seconds; the cap of the first backoff.
        max_backoff: Seconds; the cap of any backoff.
        max_retry_after: The longest 429 wait the client accepts before raising
            ``RateLimitError``.
        retry_budget: Client-wide retry throttling (gRPC style): ``(max_tokens, token_ratio)``.
            Each failed attempt spends a token, each success refills ``token_ratio``; retries
            stop while the bucket is at or below half. ``None`` disables the budget.
    """

    max_attempts: int = 4
    initial_backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    retry_budget: tuple[float, float] | None = (100.0, 0.1)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise errors.ConfigurationError("RetryPolicy.max_attempts must be an int")
        if self.max_attempts < 1:
            raise errors.ConfigurationError("RetryPolicy.max_attempts must be at least 1")
        _positive("initial_backoff", self.initial_backoff, allow_zero=True)
        _positive("max_backoff", self.max_backoff, allow_zero=True)
        _positive("max_retry_after", self.max_retry_after, allow_zero=True)
        if self.retry_budget is not None:
            tokens, ratio = self.retry_budget
            _positive("retry_budget tokens", tokens)
            _positive("retry_budget ratio", ratio)

    @classmethod
    def none(cls) -> RetryPolicy:
        """A policy that never retries a failure (429 waits still apply within the deadline)."""
        return cls(max_attempts=1, retry_budget=None)

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The jittered wait before retry number ``retry`` (1-based)."""
        cap = min(self.max_backoff, self.initial_backoff * 2 ** (retry - 1))
        return rng.uniform(0, cap)


Outcome = Literal["success", "retry", "throttled", "error"]


@attrs.frozen
class AttemptEvent:
    """One attempt of a call, as passed to the client's ``on_attempt`` hook.

    Attributes:
        operation: ``add_phone`` or ``get_user``.
        path: The request path below ``/api/``, with the percent-encoded user id.
        attempt: 1 for the first request of the call, counting every request sent.
        outcome: ``success``; ``retry`` (a failure that will be retried); ``throttled`` (a 429
            that will be waited out and re-sent); ``error`` (final for this request; a
            409/422 may still be reconciled, which shows as a following ``get_user`` event
            and a successful call).
        status: The HTTP status, or None when no response arrived.
        wait: Seconds the call will wait before its next request, when it will retry.
        reason: Short text: the status phrase or the transport error's class.
        request_id: The server's request id, if it sent one.
        rate_limit: What the response said about the rate limit.
        elapsed: Seconds the attempt took.
    """

    operation: str
    path: str
    attempt: int
    outcome: Outcome
    status: int | None = None
    wait: float | None = None
    reason: str = ""
    request_id: str | None = None
    rate_limit: RateLimitInfo | None = None
    elapsed: float = 0.0


def classify(exc: BaseException) -> tuple[bool, bool]:
    """Return ``(retryable, maybe_processed)`` for a failed attempt.

    * Not sent (DNS, refused, connect timeout, pool wait): retry; certainly not processed.
    * Ambiguous (read timeout, disconnect after writing, 500/502/504): retry; may have been
      processed, so a later 409/422 is reconciled by reading the user back.
    * 503: retry; not processed.
    * Any other 4xx (409 included), TLS failures, decode errors: final.
    """
    if isinstance(exc, errors.TransportError):
        return exc.retryable, exc.maybe_sent
    if isinstance(exc, errors.APIError) and not isinstance(exc, errors.RateLimitError):
        return exc.status in RETRY_STATUSES, exc.status in AMBIGUOUS_STATUSES
    return False, False


def is_duplicate(exc: errors.APIError) -> bool:
    """Whether an error says the user already has the phone number."""
    if isinstance(exc, errors.ConflictError):
        return True
    if isinstance(exc, errors.UnprocessableEntityError) and isinstance(exc.errors, list):
        return any(e.code in DUPLICATE_CODES for e in exc.errors)
    return False


@attrs.define
class _Call:
    request: Request
    deadline_at: float | None
    attempts: int = 0
    maybe_processed: bool = False


@attrs.define(eq=False)
class Engine:
    """Runs logical calls: pacing, sending, retrying, reconciling. Shared by a whole client."""

    transport: Transport
    policy: RetryPolicy
    pacer: Pacer
    timeout: float
    deadline: float | None
    clock: Clock = time.monotonic
    sleep: Sleep = asyncio.sleep
    rng: random.Random = attrs.Factory(random.Random)
    on_attempt: Callable[[AttemptEvent], None] | None = None
    budget: RetryBudget | None = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        cfg = self.policy.retry_budget
        self.budget = None if cfg is None else RetryBudget(max_tokens=cfg[0], token_ratio=cfg[1])

    # -- public entry points -----------------------------------------------------------

    async def call(
        self,
        request: Request,
        *,
        slot: asyncio.Semaphore | None = None,
        exist_ok: bool = False,
    ) -> tuple[User, int]:
        """Run one logical call and return the user and the number of requests sent.

        ``slot`` (the bulk runner's) is held only while a request is on the wire, never
        during a backoff or a rate-limit wait.
        """
        start = self.clock()
        call = _Call(request, None if self.deadline is None else start + self.deadline)
        try:
            return await self._run(call, slot), call.attempts
        except (errors.ConflictError, errors.UnprocessableEntityError) as exc:
            if request.phone_number is None or not (
                call.maybe_processed or (exist_ok and is_duplicate(exc))
            ):
                exc.attempts = call.attempts
                raise
            return await self._reconcile(call, exc, slot), call.attempts
        except errors.MonoCloudError as exc:
            exc.attempts = call.attempts
            raise

    # -- the retry loop ----------------------------------------------------------------

    async def _run(self, call: _Call, slot: asyncio.Semaphore | None) -> User:
        policy = self.policy
        # Fast path: most calls succeed at once, and building a tenacity loop per call costs
        # more than the rest of the SDK's own work. Tenacity takes over at the first failure.
        # Once the first contact is made, the probe bookkeeping of _attempt is not needed.
        first_try = self._send_until_not_throttled if self.pacer.probed else self._attempt
        try:
            return await first_try(call, slot)
        except errors.MonoCloudError as exc:
            if policy.max_attempts == 1 or not classify(exc)[0]:
                raise
            first: errors.MonoCloudError | None = exc

        async def attempt() -> User:
            nonlocal first
            if first is not None:
                failed, first = first, None
                raise failed
            return await self._attempt(call, slot)

        # Imported on the first retry: most processes never need it, and it costs import time.
        import tenacity as _tenacity  # noqa: PLC0415

        retrying = _tenacity.AsyncRetrying(
            sleep=self.sleep,
            retry=_tenacity.retry_if_exception(lambda exc: classify(exc)[0]),
            wait=self._wait,
            stop=lambda state: self._stop(call, state),
            before_sleep=lambda state: self._before_sleep(call, state),
            reraise=True,
        )
        return await retrying(attempt)

    def _wait(self, state: _tenacity.RetryCallState) -> float:
        """The backoff, or the server's ``Retry-After`` on a 5xx when that is longer."""
        wait = self.policy.backoff(state.attempt_number, self.rng)
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, errors.APIError) and "Retry-After" in exc.headers:
            stated = parse_retry_after(exc.headers["Retry-After"], self.pacer.wall_clock())
            if stated is not None:
                wait = max(wait, stated)
        return wait

    def _stop(self, call: _Call, state: _tenacity.RetryCallState) -> bool:
        if state.attempt_number >= self.policy.max_attempts:
            return True
        if state.upcoming_sleep > self.policy.max_retry_after:
            return True
        if self.budget is not None and not self.budget.can_retry():
            return True
        sleep = state.upcoming_sleep
        return call.deadline_at is not None and self.clock() + sleep >= call.deadline_at

    def _before_sleep(self, call: _Call, state: _tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if retry_logger.isEnabledFor(logging.WARNING):
            retry_logger.warning(
                "%s %s failed (%s); retrying in %.2f s (attempt %d of %d)",
                call.request.method,
                call.request.path,
                _reason(exc),
                state.upcoming_sleep,
                state.attempt_number,
                self.policy.max_attempts,
            )

    async def _attempt(self, call: _Call, slot: asyncio.Semaphore | None) -> User:
        """One tenacity attempt: send, waiting out 429s at the shared gate in between."""
        try:
            return await self._send_until_not_throttled(call, slot)
        finally:
            # The client's first request goes alone (see Pacer); whatever became of it, the
            # calls queued behind it must not wait forever.
            self.pacer.release_probe()

    async def _send_until_not_throttled(self, call: _Call, slot: asyncio.Semaphore | None) -> User:
        request = call.request
        throttled = 0
        while True:
            pacer = self.pacer
            if not pacer.may_send_now():
                await pacer.before_send(call.deadline_at, self.policy.max_retry_after)
            sent_at = self.clock()
            timeout = self.timeout
            if call.deadline_at is not None:
                timeout = min(timeout, call.deadline_at - sent_at)
                if timeout <= 0:
                    raise errors.MonoCloudTimeoutError(
                        f"the call's deadline of {self.deadline} s passed", maybe_sent=False
                    )
            call.attempts += 1
            try:
                if slot is None:
                    status, headers, body = await self.transport.send(request, timeout)
                else:
                    async with slot:
                        status, headers, body = await self.transport.send(request, timeout)
            except errors.TransportError as exc:
                self._failed(call, exc, sent_at)
                raise
            info = self.pacer.observe(status, headers)
            if 200 <= status < 300:  # noqa: PLR2004
                if self.budget is not None:
                    self.budget.on_success()
                self._event(call, "success", sent_at, status, headers, info)
                return read_user(status, headers, body)
            if status == 429:  # noqa: PLR2004
                throttled += 1
                stated = self.pacer.on_throttle(headers, info, sent_at)
                await self.pacer.share_throttle(stated, self.policy.max_retry_after)
                wait = self._throttle_wait(call, stated, throttled)
                if wait is None:
                    error = api_error(status, headers, body)
                    if stated is not None and isinstance(error, errors.RateLimitError):
                        error.retry_after = stated
                    self._event(call, "error", sent_at, status, headers, info)
                    raise error
                self._event(call, "throttled", sent_at, status, headers, info, wait)
                if wait > 0:
                    await self.sleep(wait)
                continue
            error = api_error(status, headers, body)
            self._failed(call, error, sent_at, info)
            raise error

    def _throttle_wait(self, call: _Call, stated: float | None, throttled: int) -> float | None:
        """How long this call waits before re-sending a 429, or None to give up now.

        A server-stated wait has closed the shared gate, where the call will wait with every
        other call of the client, so its own extra wait is 0. Without a stated wait the call
        backs off alone: the learned rate, not a client-wide pause, answers an unstated limit.
        """
        if throttled > _MAX_THROTTLED_RESENDS:
            return None
        now = self.clock()
        if stated is not None:
            if stated > self.policy.max_retry_after:
                return None
            if call.deadline_at is not None and now + stated >= call.deadline_at:
                return None
            return 0.0
        wait = self.policy.backoff(throttled, self.rng)
        if call.deadline_at is not None and now + wait >= call.deadline_at:
            return None
        return wait

    def _failed(
        self,
        call: _Call,
        exc: errors.MonoCloudError,
        sent_at: float,
        info: RateLimitInfo | None = None,
    ) -> None:
        retryable, maybe_processed = classify(exc)
        if maybe_processed:
            call.maybe_processed = True
        if retryable and self.budget is not None:
            self.budget.on_failure()
        status = exc.status if isinstance(exc, errors.APIError) else None
        request_id = exc.request_id if isinstance(exc, errors.APIError) else None
        self._emit(
            AttemptEvent(
                operation=call.request.operation,
                path=call.request.path,
                attempt=call.attempts,
                outcome="retry" if retryable else "error",
                status=status,
                reason=_reason(exc),
                request_id=request_id,
                rate_limit=info,
                elapsed=self.clock() - sent_at,
            )
        )

    def _event(
        self,
        call: _Call,
        outcome: Outcome,
        sent_at: float,
        status: int,
        headers: object,
        info: RateLimitInfo,
        wait: float | None = None,
    ) -> None:
        if self.on_attempt is None and not http_logger.isEnabledFor(logging.DEBUG):
            return
        from collections.abc import Mapping  # noqa: PLC0415 - cold path

        rid = request_id_of(headers) if isinstance(headers, Mapping) else None
        self._emit(
            AttemptEvent(
                operation=call.request.operation,
                path=call.request.path,
                attempt=call.attempts,
                outcome=outcome,
                status=status,
                wait=wait,
                reason=_phrase(status),
                request_id=rid,
                rate_limit=info,
                elapsed=self.clock() - sent_at,
            )
        )

    def _emit(self, event: AttemptEvent) -> None:
        if http_logger.isEnabledFor(logging.DEBUG):
            http_logger.debug(
                "%s %s -> %s in %.1f ms (attempt %d, %s)",
                "POST" if event.operation == "add_phone" else "GET",
                event.path,
                event.status if event.status is not None else event.reason,
                event.elapsed * 1000,
                event.attempt,
                event.outcome,
            )
        if self.on_attempt is not None:
            self.on_attempt(event)

    # -- reconciliation ----------------------------------------------------------------

    async def _reconcile(
        self, call: _Call, exc: errors.APIError, slot: asyncio.Semaphore | None
    ) -> User:
        """Read the user back after a 409/422 that may mean "an earlier attempt worked"."""
        phone = call.request.phone_number
        user_path = call.request.path.rsplit("/", 1)[0]
        read = _Call(
            attrs.evolve(get_user_request("_"), path=user_path),
            call.deadline_at,
        )
        try:
            user = await self._run(read, slot)
        except errors.MonoCloudError:
            exc.attempts = call.attempts + read.attempts
            raise exc from None
        finally:
            call.attempts += read.attempts
        if phone is not None and user.has_phone(phone):
            retry_logger.info(
                "%s %s: phone %s is on the user (%s); returning the current user",
                call.request.method,
                call.request.path,
                mask_phone(phone),
                "an earlier attempt took effect" if call.maybe_processed else "already present",
            )
            return user
        exc.attempts = call.attempts
        raise exc


def _phrase(status: int) -> str:
    import http  # noqa: PLC0415 - cold path

    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return str(status)


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, errors.APIError):
        return f"{exc.status} {_phrase(exc.status)}"
    if exc is None:
        return "unknown"
    return type(exc).__name__
