"""Bulk: many users given phones in parallel, lazily, with one result per item."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, Protocol, Self

import attrs

from monocloud_async import errors
from monocloud_async._redact import mask_phone
from monocloud_async._sansio import add_phone_request

if TYPE_CHECKING:
    from types import TracebackType

    from monocloud_async._retry import Engine
    from monocloud_async.models import User

__all__ = ["BulkProgress", "BulkReport", "BulkResult", "BulkRun", "PhoneAssignment"]

#: Errors that doom every item of a run: going on would only repeat them.
FATAL: Final = (errors.UnauthorizedError, errors.PaymentRequiredError, errors.ForbiddenError)

#: Items in progress per unit of concurrency. Items sleeping in a backoff or at the 429 gate
#: hold no wire slot, so up to this many can wait while others keep every slot busy.
_PENDING_FACTOR: Final = 2


@attrs.frozen
class PhoneAssignment:
    """One item of a bulk run: give ``user_id`` the number ``phone_number``.

    Not validated on construction: an invalid item becomes an error result of the run (with
    no request sent) instead of breaking the generator that produced it.
    """

    user_id: str
    phone_number: str = attrs.field(repr=mask_phone)
    is_verified: bool = False
    skip_restriction_checks: bool = False


@attrs.frozen
class BulkResult:
    """The outcome of one item.

    Attributes:
        item: The input as a ``PhoneAssignment`` (tuples are converted; anything unusable is
            kept as given).
        user: The updated user on success, else None.
        error: The error on failure, else None.
        attempts: Requests sent for the item (0 when it was invalid).
        elapsed: Seconds from the start of the item's processing to its result.
    """

    item: Any
    user: User | None = None
    error: errors.MonoCloudError | None = None
    attempts: int = 0
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the phone number was added (or, with ``exist_ok``, already there)."""
        return self.error is None


@attrs.frozen
class BulkReport:
    """Every result of a run, with totals.

    Attributes:
        results: One ``BulkResult`` per item, in completion order.
        succeeded: How many items succeeded.
        failed: How many items failed.
        elapsed: Seconds the whole run took.
    """

    results: list[BulkResult] = attrs.field(repr=False)
    succeeded: int
    failed: int
    elapsed: float

    @property
    def attempts(self) -> int:
        """Requests sent for all items together."""
        return sum(r.attempts for r in self.results)


class BulkProgress(Protocol):
    """Receives each result as it completes (the CLI's progress bar implements it)."""

    def on_result(self, result: BulkResult) -> None:
        """Called once per item, in completion order, from the event loop."""


@attrs.frozen
class _Abort:
    error: BaseException


_DONE: Final = object()


def _coerce(raw: object) -> PhoneAssignment | None:
    if isinstance(raw, PhoneAssignment):
        return raw
    if isinstance(raw, tuple) and 2 <= len(raw) <= 4:  # noqa: PLR2004 - (id, phone[, verified[, skip]])
        return PhoneAssignment(*raw)
    return None


class BulkRun:
    """A running (or ready) bulk add; an async iterator of ``BulkResult`` in completion order.

    Use it as ``async with client.users.add_phones(items) as run: async for result in run``.
    Leaving the ``async with`` block early (or cancelling) stops pulling input and cancels
    what is in flight, leaving nothing running. ``await run.collect()`` runs to the end and
    returns a ``BulkReport``.

    Errors that doom every item (401, 402, 403) abort the run: in-flight work is cancelled,
    results already completed are still delivered, then the error is raised from iteration.
    """

    def __init__(
        self,
        engine: Engine,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        concurrency: int = 16,
        exist_ok: bool = False,
        progress: BulkProgress | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise errors.InvalidRequestError("concurrency must be an int of at least 1")
        if not isinstance(items, Iterable | AsyncIterable):
            raise errors.InvalidRequestError("items must be an iterable or an async iterable")
        self._engine = engine
        self._items = items
        self._concurrency = concurrency
        self._exist_ok = exist_ok
        self._progress = progress
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._wire = asyncio.Semaphore(concurrency)
        self._pending = asyncio.Semaphore(concurrency * _PENDING_FACTOR)
        self._workers: list[asyncio.Task[None]] = []
        self._live = 0
        self._pull_lock = asyncio.Lock()
        self._sync_items: Iterator[Any] | None = None
        self._async_items: AsyncIterator[Any] | None = None
        self._exhausted = False
        self._finished = False
        self._closed = False
        self._aborting = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._workers else "ready"
        return f"<BulkRun concurrency={self._concurrency} {state}>"

    @property
    def concurrency(self) -> int:
        """The most requests on the wire at once."""
        return self._concurrency

    # -- lifecycle ---------------------------------------------------------------------

    def _start(self) -> None:
        if self._closed:
            raise RuntimeError("this BulkRun is closed")
        if self._workers:
            return
        if isinstance(self._items, AsyncIterable):
            self._async_items = aiter(self._items)
        else:
            self._sync_items = iter(self._items)
        # Long-lived workers rather than a task per item: a task per item costs more CPU
        # than the SDK's own work for that item.
        self._live = self._concurrency * _PENDING_FACTOR
        self._workers = [
            asyncio.create_task(self._work(), name=f"monocloud-bulk-{n}") for n in range(self._live)
        ]

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop pulling input, cancel in-flight items and wait until nothing is left running."""
        if self._closed:
            return
        self._closed = True
        pending = [t for t in self._workers if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        closer = getattr(self._items, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()

    # -- iteration ---------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[BulkResult]:
        return self

    async def __anext__(self) -> BulkResult:
        if self._finished:
            raise StopAsyncIteration
        self._start()
        got = await self._queue.get()
        if isinstance(got, BulkResult):
            self._pending.release()
            return got
        self._finished = True
        await self.aclose()
        if isinstance(got, _Abort):
            raise got.error
        raise StopAsyncIteration

    async def collect(self) -> BulkReport:
        """Run to the end and return every result with totals."""
        start = self._engine.clock()
        async with self:
            results = [result async for result in self]
        succeeded = sum(1 for r in results if r.ok)
        return BulkReport(
            results=results,
            succeeded=succeeded,
            failed=len(results) - succeeded,
            elapsed=self._engine.clock() - start,
        )

    # -- the work ----------------------------------------------------------------------

    async def _work(self) -> None:
        try:
            while not self._aborting:
                await self._pending.acquire()
                if self._stopping():
                    return
                try:
                    got, raw = await self._pull()
                except Exception as exc:  # noqa: BLE001 - the input itself failed: tell the reader
                    self._abort(exc)
                    return
                if not got:
                    self._pending.release()
                    return
                await self._one(raw)
        finally:
            self._live -= 1
            if self._live == 0 and not self._aborting:
                self._queue.put_nowait(_DONE)

    def _stopping(self) -> bool:
        # A method, not the attribute: it changes while this worker awaits.
        return self._aborting

    async def _pull(self) -> tuple[bool, object]:
        """The next input item, as ``(True, item)``, or ``(False, None)`` at the end."""
        if self._sync_items is not None:
            raw = next(self._sync_items, _DONE)
            return (raw is not _DONE), (None if raw is _DONE else raw)
        async with self._pull_lock:  # an async iterator must not be entered twice at once
            if self._exhausted or self._async_items is None:
                return False, None
            try:
                return True, await anext(self._async_items)
            except StopAsyncIteration:
                self._exhausted = True
                return False, None

    def _abort(self, error: BaseException) -> None:
        if self._aborting:
            return
        self._aborting = True
        current = asyncio.current_task()
        for task in self._workers:
            if task is not current:
                task.cancel()
        self._queue.put_nowait(_Abort(error))

    async def _one(self, raw: object) -> None:
        engine = self._engine
        start = engine.clock()
        item = _coerce(raw)
        try:
            if item is None:
                raise errors.InvalidRequestError(
                    "an item must be a PhoneAssignment or a (user_id, phone_number) tuple, "
                    f"got {type(raw).__name__}"
                )
            request = add_phone_request(
                item.user_id,
                item.phone_number,
                is_verified=item.is_verified,
                skip_restriction_checks=item.skip_restriction_checks,
            )
            user, attempts = await engine.call(request, slot=self._wire, exist_ok=self._exist_ok)
            result = BulkResult(
                item=item, user=user, attempts=attempts, elapsed=engine.clock() - start
            )
        except FATAL as exc:
            self._abort(exc)
            return
        except errors.MonoCloudError as exc:
            result = BulkResult(
                item=item if item is not None else raw,
                error=exc,
                attempts=exc.attempts,
                elapsed=engine.clock() - start,
            )
        if self._aborting:
            return
        if self._progress is not None:
            self._progress.on_result(result)
        self._queue.put_nowait(result)
