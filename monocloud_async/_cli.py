"""The ``monocloud-async`` command line (also ``python -m monocloud_async``).

Commands::

    monocloud-async demo [--users N] [--rate R] [--concurrency C] [--seed S]
    monocloud-async add-phone USER_ID PHONE [--verified] [--skip-restriction-checks] [--exist-ok]
    monocloud-async add-phones FILE|- [--concurrency N] [--rate R] [--exist-ok]
                                      [--journal PATH] [--output PATH]
                                      [--redis-url URL [--limit-key KEY]] [--shard K/N]
    monocloud-async fake-server [--port N] [--rate R] [--fail-rate F] [--latency S]
                                [--users N] [--users-file PATH] [--seed S]

``--domain``, ``--api-key`` and ``--verbose`` go before or after the command name; domain and
key fall back to ``MONOCLOUD_MANAGEMENT_DOMAIN`` and ``MONOCLOUD_MANAGEMENT_API_KEY``.

Exit status: 0 everything succeeded; 1 an API call or some items failed; 2 a usage, input or
configuration error (nothing was sent, except for an input that breaks mid-stream); 130
interrupted (Ctrl-C), 143 terminated (SIGTERM).

Phone numbers are personal data. Nothing this module writes to the terminal (progress,
messages, errors, logs) shows more than the last four digits of a number. Only the files the
user names for their own data, ``--output`` and ``--journal`` (created ``0600``), and
``fake-server --users-file`` hold numbers in full, because a re-run and the user's own
follow-up need them.

This module is imported only by the entry point; ``monocloud_async.testing`` is imported only
by ``demo`` and ``fake-server``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import hashlib
import importlib
import io
import itertools
import json
import logging
import math
import os
import random
import shlex
import shutil
import signal
import stat
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, NoReturn, TextIO
from urllib.parse import urlsplit

import attrs

from monocloud_async import errors
from monocloud_async._bulk import FATAL, BulkResult, PhoneAssignment
from monocloud_async._client import ENV_API_KEY, ENV_DOMAIN, MonoCloudClient
from monocloud_async._ratelimit import TokenBucket
from monocloud_async._redact import mask_digits, redact
from monocloud_async._sansio import api_base

if TYPE_CHECKING:
    from monocloud_async._ratelimit import RateLimiter
    from monocloud_async._retry import AttemptEvent
    from monocloud_async.models import User
    from monocloud_async.testing import FakeMonoCloud

__all__ = ["main", "run"]

PROG: Final = "monocloud-async"

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 128 + signal.SIGINT
_SIGNAL_EXIT_BASE: Final = 128

#: Seconds a first Ctrl-C lets the items already in progress finish (so their results reach
#: the journal) before the run is cancelled; a second Ctrl-C cancels at once.
INTERRUPT_GRACE: Final = 5.0
#: How often plain (non-TTY) progress lines are written.
PLAIN_PROGRESS_INTERVAL: Final = 2.0
#: How often the TTY progress line is redrawn.
TTY_PROGRESS_INTERVAL: Final = 0.1
#: Seconds of history behind the displayed rate and ETA.
RATE_WINDOW: Final = 5.0
#: How often the journal is fsync'd while running (it is also fsync'd at the end and on
#: interrupt). Every line is written with one ``write`` call as soon as its item finishes, so
#: a crash of the process loses nothing; fsync only guards against losing the machine.
JOURNAL_SYNC_INTERVAL: Final = 1.0
#: Failures listed on the console (the --output file has every one).
MAX_FAILURES_SHOWN: Final = 10

_CSV_COLUMNS: Final = ("user_id", "phone_number", "is_verified", "skip_restriction_checks")
_REQUIRED_COLUMNS: Final = ("user_id", "phone_number")
_BOOL_WORDS: Final = {
    "": False,
    "0": False,
    "false": False,
    "no": False,
    "1": True,
    "true": True,
    "yes": True,
}
_JSONL_SUFFIXES: Final = (".jsonl", ".ndjson")
_CSV_SUFFIXES: Final = (".csv",)
_LINE_COUNT_CHUNK: Final = 1 << 20
_BAR_WIDTH: Final = 12

logger = logging.getLogger("monocloud_async")


class UsageError(Exception):
    """A command-line or input error: reported in one line, exit status 2."""


class _InputReadError(Exception):
    """Reading the input failed after the run started (a disk error, a vanished file)."""


# --------------------------------------------------------------------------------------------
# Small pure helpers


def parse_bool(value: object, name: str) -> bool:
    """Read a boolean input field: true/false/1/0/yes/no (any case) or empty/missing = false.

    Raises:
        ValueError: any other value (the message shows it with long digit runs masked).
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value in {0, 1}:
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.strip().lower()]
    raise ValueError(f"{name} must be true/false/1/0/yes/no or empty, got {_shown(value)}")


def _shown(value: object) -> str:
    """A short repr of an input value for a message: long digit runs (numbers) masked."""
    text = redact(repr(value))
    return text if len(text) <= 40 else text[:37] + "..."  # noqa: PLR2004


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``K/N`` (K counts from 0, ``0 <= K < N``).

    Raises:
        argparse.ArgumentTypeError: not of that form or out of range.
    """
    k_text, sep, n_text = text.partition("/")
    if not sep or not k_text.strip().isdigit() or not n_text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"expected K/N such as 0/4, got {text!r}")
    k, n = int(k_text), int(n_text)
    if n < 1 or not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"K/N needs 0 <= K < N (K counts from 0), got {text!r}")
    return k, n


def shard_of(user_id: str, shards: int) -> int:
    """The shard of a user: CRC32 of its UTF-8 id modulo ``shards`` (stable across processes)."""
    return zlib.crc32(user_id.encode("utf-8", "surrogateescape")) % shards


def default_limit_key(domain: str) -> str:
    """The Redis key of a tenant's shared limit: ``monocloud-async:{host[:port]}``."""
    return f"{PROG}:{urlsplit(api_base(domain)).netloc.lower()}"


def _is_clean(text: str) -> bool:
    """Whether ``text`` came from valid UTF-8 (input is decoded with ``surrogateescape``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:  # noqa: PLR2004
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:  # noqa: PLR2004
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _error_record(error: errors.MonoCloudError) -> dict[str, Any]:
    status = getattr(error, "status", None)
    return {
        "type": type(error).__name__,
        "message": str(error),
        "status": status if isinstance(status, int) and status else None,
    }


# --------------------------------------------------------------------------------------------
# The terminal: one writer for messages, log lines and the progress line


class Console:
    """Writes everything for the human to stderr.

    Messages and log lines go through here so that they never collide with a progress line
    being redrawn in place: the line is cleared first and redrawn on the next tick.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        try:
            self.tty = stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self._status_shown = False

    def message(self, text: str) -> None:
        """Write a line (clearing the progress line first)."""
        self.clear_status()
        self.stream.write(text + "\n")
        self.stream.flush()

    def status(self, text: str) -> None:
        """Show a progress line: redrawn in place on a TTY, appended as a line otherwise."""
        if self.tty:
            width = max(20, shutil.get_terminal_size().columns - 1)
            # Kept to one screen line: a wrapped line cannot be redrawn with "\r".
            self.stream.write("\r" + text[:width] + "\x1b[K")
            self._status_shown = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear_status(self) -> None:
        """Remove the progress line, if one is shown."""
        if self._status_shown:
            self.stream.write("\r\x1b[K")
            self._status_shown = False


class _ConsoleLogHandler(logging.Handler):
    """Sends ``monocloud_async`` log records through the console."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.message(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


class _HideRetryWarnings(logging.Filter):
    """Without --verbose, retries are counted on the progress line instead of logged one by one.

    A bulk run against a flaky tenant would otherwise print a WARNING per retry and bury the
    progress line; --verbose shows them all.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and record.name == "monocloud_async.retry")


@contextlib.contextmanager
def _logging_to(console: Console, *, verbose: bool) -> Iterator[None]:
    """Route the SDK's logger to the console for one command, then restore it.

    Restored afterwards so that calling ``main()`` repeatedly (tests, embedding) does not
    stack handlers. The SDK never logs the key or a full number, so --verbose is safe to paste.
    """
    handler = _ConsoleLogHandler(console)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(_HideRetryWarnings())
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


# --------------------------------------------------------------------------------------------
# Progress: counters fed by the SDK's hooks, and their display


@attrs.define(eq=False)
class Tally:
    """Counters of a bulk run: a ``BulkProgress`` (``on_result``) and an ``on_attempt`` hook.

    Attributes:
        total: Input rows expected, when known.
        ok: Items that succeeded.
        failed: Items that failed (malformed rows included).
        skipped: Rows not sent: already done per the journal, or in another shard.
        requests: Requests sent (every attempt, read-backs included).
        retries: Failed attempts that were retried.
        throttled: 429 answers.
    """

    total: int | None = None
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    started: float = attrs.field(factory=time.monotonic)
    _samples: deque[tuple[float, int, int]] = attrs.field(factory=deque)

    @property
    def processed(self) -> int:
        """Items with a result."""
        return self.ok + self.failed

    @property
    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def on_result(self, result: BulkResult) -> None:
        """Count one finished item (the SDK's ``BulkProgress`` protocol)."""
        if result.ok:
            self.ok += 1
        else:
            self.failed += 1

    def on_attempt(self, event: AttemptEvent) -> None:
        """Count one request (the client's ``on_attempt`` hook)."""
        self.requests += 1
        if event.outcome == "retry":
            self.retries += 1
        if event.status == 429:  # noqa: PLR2004
            self.throttled += 1

    def sample(self, now: float) -> None:
        """Remember the counts at ``now`` for the windowed rate and ETA."""
        self._samples.append((now, self.processed, self.processed + self.skipped))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW:  # noqa: PLR2004
            self._samples.popleft()

    def rates(self, now: float) -> tuple[float, float]:
        """Items processed per second and rows passed per second, over the recent window."""
        if len(self._samples) >= 2 and now - self._samples[0][0] >= 0.5:  # noqa: PLR2004
            then, processed, passed = self._samples[0]
            span = now - then
            return (self.processed - processed) / span, (
                self.processed + self.skipped - passed
            ) / span
        span = max(now - self.started, 1e-9)
        return self.processed / span, (self.processed + self.skipped) / span

    def line(self, now: float, *, bar: bool) -> str:
        """The progress line: done/total, rate, outcomes, retries, 429s and ETA.

        With ``bar`` (a TTY): compact, with a bar, to fit an 80-column terminal; without: a
        self-explanatory log line.
        """
        item_rate, row_rate = self.rates(now)
        done = self.processed + self.skipped
        total = max(self.total, done) if self.total is not None else None
        eta = None
        if total is not None and row_rate > 0:
            eta = _duration((total - done) / row_rate)
        skipped = self.skipped
        if bar:
            parts = []
            if total:
                filled = round(done / total * _BAR_WIDTH)
                parts.append("[" + "#" * filled + "-" * (_BAR_WIDTH - filled) + "]")
                parts.append(f"{done}/{total} {done / total:.0%}")
            else:
                parts.append(f"{done} rows")
            parts.append(f"{item_rate:.1f}/s ok {self.ok} failed {self.failed}")
            if skipped:
                parts.append(f"skipped {skipped}")
            parts.append(f"retries {self.retries} 429s {self.throttled}")
            if eta is not None:
                parts.append(f"ETA {eta}")
            return " ".join(parts)
        where = f"{done}/{total} ({done / total:.0%})" if total else f"{done} rows"
        text = (
            f"progress: {where}, {item_rate:.1f} items/s, {self.ok} ok, {self.failed} failed, "
            + (f"{skipped} skipped, " if skipped else "")
            + f"{self.retries} retries, {self.throttled} 429s"
        )
        return text + (f", ETA {eta}" if eta is not None else "")


@contextlib.asynccontextmanager
async def _progress(console: Console, tally: Tally) -> AsyncIterator[None]:
    """Show the tally while the block runs: redrawn on a TTY, a plain line every 2 s otherwise."""

    async def draw() -> None:
        last_plain = time.monotonic()
        while True:
            await asyncio.sleep(TTY_PROGRESS_INTERVAL)
            now = time.monotonic()
            tally.sample(now)
            if console.tty:
                console.status(tally.line(now, bar=True))
            elif now - last_plain >= PLAIN_PROGRESS_INTERVAL:
                last_plain = now
                console.status(tally.line(now, bar=False))

    task = asyncio.create_task(draw(), name="monocloud-async-progress")
    try:
        yield
    finally:
        task.cancel()
        # asyncio.wait, not "await task": it never raises the task's CancelledError, so it
        # cannot swallow a cancellation of the command itself.
        await asyncio.wait([task])
        console.clear_status()


# --------------------------------------------------------------------------------------------
# Input: CSV or JSON lines, streamed


@attrs.frozen
class Row:
    """One input row: an item to send, or the reason it cannot be sent.

    Attributes:
        line: The row's (first) line number in the input, from 1.
        user_id: The user id, when one could be read.
        phone_number: The number, when one could be read.
        item: What to send, or None for a malformed row.
        problem: Why the row is malformed (no full number in it), or None.
    """

    line: int
    user_id: str | None
    phone_number: str | None
    item: PhoneAssignment | None = None
    problem: str | None = None


def _make_row(
    line: int,
    user_id: object,
    phone_number: object,
    is_verified: object = None,
    skip_restriction_checks: object = None,
) -> Row:
    """Validate the fields of a row (the SDK validates the number's form when sending)."""
    uid = user_id.strip() if isinstance(user_id, str) else None
    phone = phone_number.strip() if isinstance(phone_number, str) else None

    def bad(problem: str) -> Row:
        return Row(line, uid or None, phone or None, problem=problem)

    if not uid:
        return bad("user_id is missing or empty" if uid is None else "user_id is empty")
    if not phone:
        return bad("phone_number is missing or empty" if phone is None else "phone_number is empty")
    if not (_is_clean(uid) and _is_clean(phone)):
        return bad("the line is not valid UTF-8")
    try:
        verified = parse_bool(is_verified, "is_verified")
        skip = parse_bool(skip_restriction_checks, "skip_restriction_checks")
    except ValueError as exc:
        return bad(str(exc))
    item = PhoneAssignment(uid, phone, is_verified=verified, skip_restriction_checks=skip)
    return Row(line, uid, phone, item=item)


@attrs.frozen
class CsvColumns:
    """Where each known column sits in a CSV file, read from its header."""

    width: int
    index: dict[str, int]

    @classmethod
    def from_header(cls, fields: list[str], line: int = 1) -> CsvColumns:
        """Validate a header: user_id and phone_number, optionally is_verified (any order).

        ``skip_restriction_checks`` is accepted too; any other column is refused, so that a
        typo (``phone``) or a file without a header is caught before anything is sent.

        Raises:
            UsageError: the header is not valid; the message names its line.
        """
        names = [field.strip().lower() for field in fields]
        problems = []
        missing = [name for name in _REQUIRED_COLUMNS if name not in names]
        if missing:
            problems.append("missing " + ", ".join(missing))
        unknown = [name for name in names if name not in _CSV_COLUMNS]
        if unknown:
            problems.append("unexpected " + ", ".join(_shown(name) for name in unknown))
        repeated = sorted({name for name in names if names.count(name) > 1 and name})
        if repeated:
            problems.append("repeated " + ", ".join(repeated))
        if problems:
            raise UsageError(
                f"line {line}: the CSV header must be user_id,phone_number[,is_verified] "
                f"({'; '.join(problems)})"
            )
        return cls(width=len(names), index={name: i for i, name in enumerate(names)})

    def row(self, line: int, fields: list[str]) -> Row:
        """Turn the fields of one data line into a row."""
        # Trailing empty fields (a spreadsheet's extra commas) are harmless; anything else
        # that does not match the header is malformed.
        if len(fields) > self.width and not any(f.strip() for f in fields[self.width :]):
            fields = fields[: self.width]
        if len(fields) != self.width:
            index = self.index
            where = index["user_id"]
            uid = fields[where].strip() if where < len(fields) else ""
            return Row(
                line,
                uid if uid and _is_clean(uid) else None,
                None,
                problem=f"expected {self.width} fields as in the header, got {len(fields)}",
            )

        def get(name: str) -> str | None:
            where = self.index.get(name)
            return None if where is None else fields[where]

        return _make_row(
            line,
            get("user_id"),
            get("phone_number"),
            get("is_verified"),
            get("skip_restriction_checks"),
        )


def _csv_rows(stream: TextIO, columns: CsvColumns, lines_before: int) -> Iterator[Row]:
    """The data rows of a CSV file whose header (and ``lines_before`` lines) were read."""
    reader = csv.reader(stream, strict=True)
    while True:
        start = lines_before + reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            # The csv module's messages describe the syntax, never the field values.
            yield Row(start, None, None, problem=f"not valid CSV ({exc})")
            continue
        if not any(field.strip() for field in fields):
            continue  # a blank line
        yield columns.row(start, fields)


def json_row(line: int, text: str) -> Row | None:
    """Parse one JSON line (None for a blank line). Unknown keys are ignored."""
    if not text.strip():
        return None
    if not _is_clean(text):
        return Row(line, None, None, problem="the line is not valid UTF-8")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return Row(line, None, None, problem=f"not valid JSON ({exc.msg} at column {exc.colno})")
    except (ValueError, RecursionError):
        return Row(line, None, None, problem="not valid JSON")
    if not isinstance(obj, dict):
        return Row(line, None, None, problem="expected a JSON object with user_id and phone_number")
    user_id, phone = obj.get("user_id"), obj.get("phone_number")
    if user_id is not None and not isinstance(user_id, str):
        return Row(line, None, None, problem="user_id must be a string")
    if phone is not None and not isinstance(phone, str):
        return Row(line, user_id or None, None, problem="phone_number must be a string")
    return _make_row(
        line, user_id, phone, obj.get("is_verified"), obj.get("skip_restriction_checks")
    )


def _jsonl_rows(lines: Iterable[str], first_line: int) -> Iterator[Row]:
    for number, text in enumerate(lines, start=first_line):
        row = json_row(number, text)
        if row is not None:
            yield row


@attrs.define(eq=False)
class InputFile:
    """An opened input whose format is known and whose header was checked.

    Attributes:
        name: The path, or ``<stdin>``.
        format: ``csv`` or ``jsonl``.
        rows: The rows, read lazily (iterate it from one thread only).
        total: Data lines expected (a regular file's line count), or None.
    """

    name: str
    format: str
    rows: Iterator[Row]
    total: int | None
    _stream: io.TextIOWrapper
    _is_stdin: bool
    reading: bool = False

    @classmethod
    def open(cls, path: str) -> InputFile:
        """Open ``path`` (``-``: stdin), detect its format and check a CSV header.

        The format comes from the extension (``.csv``, ``.jsonl``, ``.ndjson``), else from
        the first non-blank line (``{`` starts JSON lines, anything else a CSV header).
        Reading never loads the input whole: rows are parsed as they are pulled.

        Raises:
            UsageError: unreadable file, empty input, bad header.
        """
        is_stdin = path == "-"
        name = "<stdin>" if is_stdin else path
        # utf-8-sig drops a spreadsheet's BOM; surrogateescape lets one bad line be reported
        # as that line's failure instead of breaking the whole stream; newline="" as the csv
        # module requires.
        try:
            if is_stdin:
                stream = io.TextIOWrapper(
                    sys.stdin.buffer, encoding="utf-8-sig", errors="surrogateescape", newline=""
                )
            else:
                stream = open(  # noqa: SIM115, PTH123 - closed by the reader thread or on error
                    path, encoding="utf-8-sig", errors="surrogateescape", newline=""
                )
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
        try:
            return cls._detect(stream, name, path, is_stdin=is_stdin)
        except BaseException:
            _release(stream, is_stdin=is_stdin)
            raise

    @classmethod
    def _detect(
        cls, stream: io.TextIOWrapper, name: str, path: str, *, is_stdin: bool
    ) -> InputFile:
        try:
            if not is_stdin and stat.S_ISDIR(os.fstat(stream.fileno()).st_mode):
                raise UsageError(f"cannot read {name}: it is a directory")
            skipped = 0
            first = stream.readline()
            while first and not first.strip():
                skipped += 1
                first = stream.readline()
        except OSError as exc:
            raise UsageError(f"cannot read {name}: {exc.strerror or exc}") from None
        suffix = os.path.splitext(path)[1].lower()  # noqa: PTH122 - "-" is not a path
        if suffix in _JSONL_SUFFIXES or (
            suffix not in _CSV_SUFFIXES and first.lstrip().startswith("{")
        ):
            total = _count_lines(path, is_stdin=is_stdin)
            rows = _jsonl_rows(itertools.chain([first], stream), skipped + 1)
            return cls(name, "jsonl", rows, total, stream, is_stdin)
        if not first:
            raise UsageError(
                f"{name} is empty: expected a CSV header user_id,phone_number[,is_verified] "
                "or JSON lines"
            )
        if not _is_clean(first):
            raise UsageError(f"line {skipped + 1}: the CSV header is not valid UTF-8")
        try:
            header = next(csv.reader([first]))
        except csv.Error as exc:
            raise UsageError(
                f"line {skipped + 1}: the CSV header is not valid CSV ({exc})"
            ) from None
        columns = CsvColumns.from_header(header, skipped + 1)
        total = _count_lines(path, is_stdin=is_stdin)
        if total is not None:
            total = max(0, total - skipped - 1)
        rows = _csv_rows(stream, columns, skipped + 1)
        return cls(name, "csv", rows, total, stream, is_stdin)

    def close(self) -> None:
        """Close the file (stdin is detached, not closed)."""
        _release(self._stream, is_stdin=self._is_stdin)

    def close_unless_reading(self) -> None:
        """Close the file unless a reader thread took it over (the thread closes it then)."""
        if not self.reading:
            self.close()

    @property
    def is_stdin(self) -> bool:
        """Whether the input is standard input (whose reads may block indefinitely)."""
        return self._is_stdin


def _release(stream: io.TextIOWrapper, *, is_stdin: bool) -> None:
    if is_stdin:
        # Detached, not closed: closing the wrapper would close sys.stdin's buffer too.
        with contextlib.suppress(ValueError):
            stream.detach()
    else:
        stream.close()


def _count_lines(path: str, *, is_stdin: bool) -> int | None:
    """Lines in a regular file (for done/total and the ETA); None for stdin or a pipe."""
    if is_stdin:
        return None
    try:
        with open(path, "rb") as f:  # noqa: PTH123
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            count, last = 0, b"\n"
            while chunk := f.read(_LINE_COUNT_CHUNK):
                count += chunk.count(b"\n")
                last = chunk[-1:]
            return count + (last != b"\n")
    except OSError:
        return None


@attrs.frozen
class _End:
    error: Exception | None = None


class RowFeeder:
    """Reads rows in a daemon thread and hands them to the event loop, at most ``capacity`` ahead.

    A thread, because a read from stdin, a pipe or a slow disk blocks and would stall every
    request in flight; a daemon thread, because a read blocked on an idle stdin must not keep
    the process alive once the run is over. The thread owns the input and closes it.
    """

    def __init__(self, source: InputFile, *, capacity: int) -> None:
        self._source = source
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Row | _End] = asyncio.Queue()
        self._room = threading.Semaphore(capacity)
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._work, name="monocloud-async-reader", daemon=True
        )

    def start(self) -> None:
        """Start reading; the thread owns the input from now on."""
        self._source.reading = True
        self._thread.start()

    def _work(self) -> None:
        error: Exception | None = None
        try:
            for row in self._source.rows:
                if not self._wait_for_room():
                    return
                self._hand_over(row)
        except Exception as exc:  # noqa: BLE001 - reported by the reading side
            error = exc
        finally:
            with contextlib.suppress(Exception):
                self._source.close()
        self._hand_over(_End(error))

    def _wait_for_room(self) -> bool:
        # Wakes up regularly to notice stop(): the loop side no longer takes rows then.
        while not self._room.acquire(timeout=0.1):
            if self._stopped.is_set():
                return False
        return not self._stopped.is_set()

    def _hand_over(self, got: Row | _End) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, got)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            self._stopped.set()

    async def get(self) -> Row | None:
        """The next row, or None at the end of the input (or after :meth:`stop`).

        Raises:
            _InputReadError: reading the input failed.
        """
        got = await self._queue.get()
        if isinstance(got, _End):
            self._queue.put_nowait(got)  # every later call sees the end too
            if got.error is not None:
                raise _InputReadError(f"reading {self._source.name} failed: {got.error}")
            return None
        self._room.release()
        return got

    def stop(self) -> None:
        """Stop reading: :meth:`get` returns None from now on (after rows already queued)."""
        self._stopped.set()
        self._queue.put_nowait(_End())

    def join(self) -> None:
        """Wait briefly for the thread to close the input (not for a read blocked on stdin)."""
        if not self._source.is_stdin:
            self._thread.join(timeout=2.0)


# --------------------------------------------------------------------------------------------
# Journal and output


def _private_opener(path: str, flags: int) -> int:
    """Create files holding phone numbers readable by their owner only."""
    return os.open(path, flags, 0o600)


def _key(user_id: str, phone_number: str) -> bytes:
    # A 16-byte digest per finished item instead of two strings: a journal of millions of
    # items stays a few tens of MB in memory.
    raw = f"{user_id}\x00{phone_number}".encode("utf-8", "surrogateescape")
    return hashlib.blake2b(raw, digest_size=16).digest()


class Journal:
    """An append-only JSON-lines record of finished items, keyed by (user_id, phone_number).

    One line per finished item, written with a single ``write`` as soon as the item finishes
    (so a killed process loses nothing), fsync'd every second, at the end and on interrupt.
    An item with an ``"ok": true`` line is never sent again, by this run or a later one;
    failed items are retried on a re-run. Lines that do not parse (a torn last line after a
    crash or power loss) are ignored. Only one run may use a journal at a time (a lock).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._done: set[bytes] = set()
        self._fd = -1
        self._synced_at = 0.0
        self.loaded = 0
        self.unreadable = 0

    def open(self) -> None:
        """Load what is already done and open for appending.

        Raises:
            UsageError: the journal cannot be opened, or another run holds it.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise UsageError(
                f"cannot open the journal {self.path}: {exc.strerror or exc}"
            ) from None
        try:
            _lock(fd, self.path)
            with os.fdopen(os.dup(fd), "rb") as f:
                tail = b"\n"
                for raw in f:
                    self._load_line(raw)
                    tail = raw[-1:]
            if tail != b"\n":
                # The torn line stays (ignored on every load); the next record starts afresh.
                os.write(fd, b"\n")
        except OSError as exc:
            os.close(fd)
            raise UsageError(
                f"cannot read the journal {self.path}: {exc.strerror or exc}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._synced_at = time.monotonic()

    def _load_line(self, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):
            self.unreadable += 1
            return
        if not isinstance(record, dict):
            self.unreadable += 1
            return
        user_id, phone = record.get("user_id"), record.get("phone_number")
        if record.get("ok") is True and isinstance(user_id, str) and isinstance(phone, str):
            key = _key(user_id, phone)
            if key not in self._done:
                self._done.add(key)
                self.loaded += 1

    def is_done(self, user_id: str, phone_number: str) -> bool:
        """Whether the item already succeeded."""
        return _key(user_id, phone_number) in self._done

    def record(self, record: dict[str, Any]) -> None:
        """Append the line of a finished item (user_id, phone_number, ok, ...)."""
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
            "utf-8", "surrogateescape"
        )
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        if record.get("ok") is True:
            self._done.add(_key(record["user_id"], record["phone_number"]))
        now = time.monotonic()
        if now - self._synced_at >= JOURNAL_SYNC_INTERVAL:
            self.sync()

    def sync(self) -> None:
        """Flush the journal to the disk (``fsync``)."""
        if self._fd >= 0:
            os.fsync(self._fd)
            self._synced_at = time.monotonic()

    def close(self) -> None:
        """Flush to the disk and close (releasing the lock); a second call does nothing."""
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _lock(fd: int, path: str) -> None:
    try:
        import fcntl  # noqa: PLC0415 - POSIX only
    except ImportError:  # pragma: no cover - Windows: no advisory lock
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UsageError(f"the journal {path} is in use by another run") from None


class Output:
    """The --output file: one JSON line per processed item (``-``: stdout)."""

    def __init__(self, path: str) -> None:
        self._owned = path != "-"
        try:
            self._stream: IO[str] = (
                open(path, "w", encoding="utf-8", opener=_private_opener)  # noqa: SIM115
                if self._owned
                else sys.stdout
            )
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None

    def write(self, record: dict[str, Any]) -> None:
        """Write one line and flush it (so an interrupted run's file is complete so far)."""
        self._stream.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Close the file (stdout is only flushed)."""
        if self._owned:
            self._stream.close()
        else:
            self._stream.flush()


# --------------------------------------------------------------------------------------------
# Commands


def _out(text: str) -> None:
    """Write a line of the command's result to stdout (flushed: a parent may be waiting)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _credentials(args: argparse.Namespace) -> tuple[str, str]:
    """The domain and key from the options or the environment, with CLI-worded errors."""
    domain = args.domain or os.environ.get(ENV_DOMAIN)
    api_key = args.api_key or os.environ.get(ENV_API_KEY)
    if not domain:
        raise errors.ConfigurationError(f"no domain: pass --domain or set {ENV_DOMAIN}")
    if not api_key:
        raise errors.ConfigurationError(f"no API key: pass --api-key or set {ENV_API_KEY}")
    return domain, api_key


def _explain(console: Console, error: errors.MonoCloudError) -> None:
    """Print an error: its (already masked) message, then status, problem and request id."""
    console.message(f"{PROG}: {type(error).__name__}: {error}")
    if isinstance(error, errors.APIError):
        console.message(f"  status: {error.status}")
        problem = error.problem
        if problem is not None:
            if problem.title:
                console.message(f"  title: {redact(problem.title)}")
            if problem.detail:
                console.message(f"  detail: {redact(problem.detail)}")
        if isinstance(error, errors.UnprocessableEntityError) and error.errors:
            if isinstance(error.errors, list):
                for identity in error.errors:
                    console.message(f"  {identity.code}: {redact(identity.description)}")
            else:
                for field, messages in error.errors.items():
                    console.message(f"  {field}: {redact('; '.join(messages))}")
        if error.request_id:
            console.message(f"  request id: {error.request_id}")
    elif isinstance(error, errors.TransportError) and error.__cause__ is not None:
        console.message(f"  cause: {type(error.__cause__).__name__}")
    if error.attempts:
        console.message(f"  attempts: {error.attempts}")


def phones_table(user: User) -> list[str]:
    """The user's phone numbers as text lines: id, masked number, primary, verified."""
    rows = [("ID", "NUMBER", "PRIMARY", "VERIFIED")]
    rows += [
        (
            phone.id,
            mask_digits(phone.phone),
            "yes" if phone.primary else "no",
            "yes" if phone.verified else "no",
        )
        for phone in user.phone_numbers
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        ("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]


def _cmd_add_phone(args: argparse.Namespace, console: Console) -> int:
    domain, api_key = _credentials(args)
    return asyncio.run(_add_phone(args, console, domain, api_key))


async def _add_phone(args: argparse.Namespace, console: Console, domain: str, api_key: str) -> int:
    async with MonoCloudClient(domain, api_key) as client:
        try:
            user = await client.users.add_phone(
                args.user_id,
                args.phone,
                is_verified=args.verified,
                skip_restriction_checks=args.skip_restriction_checks,
                exist_ok=args.exist_ok,
            )
        except errors.InvalidRequestError as exc:
            # An invalid argument: nothing was sent.
            raise UsageError(str(exc)) from None
        except errors.MonoCloudError as exc:
            _explain(console, exc)
            return EXIT_FAILED
    count = len(user.phone_numbers)
    _out(f"user {user.user_id} has {count} phone number{'' if count == 1 else 's'}:")
    for line in phones_table(user):
        _out(line)
    return EXIT_OK


@attrs.define(eq=False)
class BulkCommand:
    """``add-phones``: stream the input into ``users.add_phones`` and record every result."""

    args: argparse.Namespace
    console: Console
    domain: str
    api_key: str
    source: InputFile
    journal: Journal | None
    output: Output | None
    tally: Tally
    interrupted: int | None = None
    _feeder: RowFeeder | None = None
    _lines: dict[int, int] = attrs.Factory(dict)
    _failures_shown: int = 0
    _grace: asyncio.TimerHandle | None = None

    async def run(self) -> int:
        """Run to the end (or the interrupt) and return the exit status."""
        limiter = self._limiter()
        try:
            async with MonoCloudClient(
                self.domain,
                self.api_key,
                rate_limiter=limiter,
                on_attempt=self.tally.on_attempt,
                max_connections=max(100, self.args.concurrency),
            ) as client:
                self._feeder = RowFeeder(self.source, capacity=max(64, 2 * self.args.concurrency))
                self._feeder.start()
                with self._interrupts():
                    async with _progress(self.console, self.tally):
                        status = await self._consume(client)
        finally:
            if self._feeder is not None:
                self._feeder.stop()
                self._feeder.join()
            if self.journal is not None:
                self.journal.sync()
            closer = getattr(limiter, "aclose", None)
            if closer is not None:
                await closer()
        if self.interrupted is not None:
            return _SIGNAL_EXIT_BASE + self.interrupted
        return status

    async def _consume(self, client: MonoCloudClient) -> int:
        run = client.users.add_phones(
            self._items(),
            concurrency=self.args.concurrency,
            exist_ok=self.args.exist_ok,
            progress=self.tally,
        )
        try:
            async with run:
                async for result in run:
                    self._finish(result, self._lines.pop(id(result.item), None))
        except FATAL as exc:
            self.console.clear_status()
            self.console.message(f"{PROG}: the run was stopped: every item would fail like this")
            _explain(self.console, exc)
            return EXIT_FAILED
        except _InputReadError as exc:
            self.console.message(f"{PROG}: error: {exc}")
            return EXIT_USAGE
        return EXIT_FAILED if self.tally.failed else EXIT_OK

    def _limiter(self) -> RateLimiter | None:
        rate: float | None = self.args.rate
        if rate is None:
            return None
        if self.args.redis_url is None:
            return TokenBucket(rate)
        key = self.args.limit_key or default_limit_key(self.domain)
        try:
            module = importlib.import_module("monocloud_async._redis")
            # While Redis is down each worker paces alone: with --shard K/N there are N of
            # them, so 1/N each keeps the fleet under the limit.
            share = 1 / self.args.shard[1] if self.args.shard else 0.5
            limiter: RateLimiter = module.RedisRateLimiter(
                self.args.redis_url, key=key, rate=rate, fallback_share=share
            )
        except ImportError as exc:
            raise UsageError(
                f"--redis-url needs the redis extra: pip install 'monocloud-async[redis]' ({exc})"
            ) from None
        return limiter

    async def _items(self) -> AsyncIterator[PhoneAssignment]:
        """The rows to send: malformed rows, other shards and journaled successes left out."""
        feeder = self._feeder
        if feeder is None:  # pragma: no cover - set by run()
            return
        shard = self.args.shard
        journal = self.journal
        while self.interrupted is None and (row := await feeder.get()) is not None:
            if shard is not None and shard_of(row.user_id or "", shard[1]) != shard[0]:
                # A row without a readable user id lands in shard 0 (crc32 of ""), so every
                # malformed row is still reported exactly once across the shards.
                self.tally.skipped += 1
                continue
            if row.item is None:
                error = errors.InvalidRequestError(f"line {row.line}: {row.problem}")
                item = PhoneAssignment(row.user_id or "", row.phone_number or "")
                result = BulkResult(item=item, error=error)
                self.tally.on_result(result)
                self._finish(result, row.line)
                continue
            if journal is not None and journal.is_done(row.item.user_id, row.item.phone_number):
                self.tally.skipped += 1
                continue
            self._lines[id(row.item)] = row.line
            yield row.item

    def _finish(self, result: BulkResult, line: int | None) -> None:
        item: PhoneAssignment = result.item
        error = result.error
        record = {
            "user_id": item.user_id or None,
            "phone_number": item.phone_number or None,
            "ok": result.ok,
            "attempts": result.attempts,
            "error": None if error is None else _error_record(error),
        }
        if self.journal is not None and item.user_id and item.phone_number:
            self.journal.record({**record, "line": line})
        if self.output is not None:
            self.output.write(record)
        if error is not None:
            self._show_failure(error, line)

    def _show_failure(self, error: errors.MonoCloudError, line: int | None) -> None:
        self._failures_shown += 1
        if self._failures_shown > MAX_FAILURES_SHOWN:
            return
        text = redact(str(error))
        where = f"line {line}: " if line is not None and not text.startswith("line ") else ""
        self.console.message(f"failed: {where}{type(error).__name__}: {text}")
        if self._failures_shown == MAX_FAILURES_SHOWN:
            hint = " (see --output)" if self.output is not None else ""
            self.console.message(f"further failures are not shown{hint}")

    @contextlib.contextmanager
    def _interrupts(self) -> Iterator[None]:
        """First Ctrl-C: stop reading and let the items in progress finish; second: cancel."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        installed: list[signal.Signals] = []
        if task is not None:
            for sig, handler in (
                (signal.SIGINT, self._on_sigint),
                (signal.SIGTERM, self._on_sigterm),
            ):
                try:
                    loop.add_signal_handler(sig, handler, task)
                except (ValueError, RuntimeError, NotImplementedError):
                    # Not the main thread (main() run from a thread) or no signal support:
                    # KeyboardInterrupt and cancellation still stop the run cleanly.
                    continue
                installed.append(sig)
        try:
            yield
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            if self._grace is not None:
                self._grace.cancel()

    def _on_sigint(self, task: asyncio.Task[Any]) -> None:
        if self.interrupted is not None:
            task.cancel()
            return
        self.interrupted = signal.SIGINT
        if self._feeder is not None:
            self._feeder.stop()
        self.console.message(
            f"interrupted: finishing the items in progress (at most {INTERRUPT_GRACE:g} s); "
            "press Ctrl-C again to stop at once"
        )
        self._grace = asyncio.get_running_loop().call_later(INTERRUPT_GRACE, task.cancel)

    def _on_sigterm(self, task: asyncio.Task[Any]) -> None:
        if self.interrupted is None:
            self.interrupted = signal.SIGTERM
        task.cancel()

    def summary(self) -> None:
        """Print what the run did (also after an interrupt)."""
        tally = self.tally
        elapsed = tally.elapsed
        rate = tally.processed / elapsed if elapsed > 0 else 0.0
        skipped = f", {tally.skipped} skipped" if tally.skipped else ""
        self.console.message(
            f"{tally.processed} items in {elapsed:.1f} s ({rate:.1f} items/s): "
            f"{tally.ok} ok, {tally.failed} failed{skipped}; "
            f"{tally.requests} requests, {tally.retries} retries, {tally.throttled} 429s"
        )
        journal = self.journal
        if journal is not None and journal.loaded:
            self.console.message(f"journal: {journal.loaded} items were already done before")


def _check_distinct(args: argparse.Namespace) -> None:
    """Refuse an --output or --journal that is the input or each other: it would be clobbered."""
    files = [("the input", args.file), ("--journal", args.journal), ("--output", args.output)]
    named = [(what, Path(path)) for what, path in files if path not in {None, "-"}]
    for (first, a), (second, b) in itertools.combinations(named, 2):
        with contextlib.suppress(OSError):  # a file that does not exist yet is distinct
            if a.samefile(b):
                raise UsageError(f"{second} must not be the same file as {first}")


def _cmd_add_phones(args: argparse.Namespace, console: Console) -> int:
    if args.redis_url is not None and args.rate is None:
        raise UsageError("--redis-url needs --rate (the fleet-wide requests per second)")
    if args.limit_key is not None and args.redis_url is None:
        raise UsageError("--limit-key needs --redis-url")
    _check_distinct(args)
    domain, api_key = _credentials(args)
    api_base(domain)  # a bad domain is a usage error before the input is even opened
    with contextlib.ExitStack() as stack:
        source = InputFile.open(args.file)
        stack.callback(source.close_unless_reading)
        journal = None
        if args.journal is not None:
            journal = Journal(args.journal)
            journal.open()
            stack.callback(journal.close)
            if journal.unreadable:
                console.message(
                    f"journal: ignored {journal.unreadable} unreadable line(s) "
                    "(a torn last line is left by an interrupted write)"
                )
        output = None
        if args.output is not None:
            output = Output(args.output)
            stack.callback(output.close)
        command = BulkCommand(
            args=args,
            console=console,
            domain=domain,
            api_key=api_key,
            source=source,
            journal=journal,
            output=output,
            tally=Tally(total=source.total),
        )
        try:
            status = asyncio.run(command.run())
        except (KeyboardInterrupt, asyncio.CancelledError):
            status = _SIGNAL_EXIT_BASE + (command.interrupted or signal.SIGINT)
        command.summary()
        if status > _SIGNAL_EXIT_BASE:
            kept = f"; the journal {journal.path} is intact" if journal is not None else ""
            console.message(f"interrupted{kept}")
        return status


def demo_phone(rng: random.Random) -> str:
    """A valid, fictional E.164 number (+1 NXX 555 XXXX) drawn from ``rng``."""
    return f"+1{rng.randint(2, 9)}{rng.randint(0, 99):02d}555{rng.randint(0, 9999):04d}"


def _cmd_demo(args: argparse.Namespace, console: Console) -> int:
    return asyncio.run(_demo(args, console))


async def _demo(args: argparse.Namespace, console: Console) -> int:
    testing = importlib.import_module("monocloud_async.testing")
    rng = random.Random(args.seed)  # noqa: S311 - reproducible demo data
    async with testing.FakeMonoCloud(seed=args.seed, record_requests=False) as fake:
        fake.rate_limit(args.rate)
        fake.delay(0.005)
        # Dropped responses happen after the phone is stored: the hard case, where only the
        # SDK's read-back keeps a retry from failing or adding the number twice.
        fake.set_fault_rates(fail_rate=0.02, disconnect_rate=0.01, after_commit=True)
        pairs = [(fake.add_user(), demo_phone(rng)) for _ in range(args.users)]
        console.message(
            f"demo: adding {args.users} phone numbers at concurrency {args.concurrency} to a "
            f"fake tenant limited to {args.rate:g} requests/s, with 2% 503s and 1% lost responses"
        )
        tally = Tally(total=args.users)
        async with MonoCloudClient(
            fake.domain,
            fake.api_key,
            on_attempt=tally.on_attempt,
            max_connections=max(100, args.concurrency),
        ) as client:
            items = (PhoneAssignment(uid, phone) for uid, phone in pairs)
            run = client.users.add_phones(items, concurrency=args.concurrency, progress=tally)
            failures: list[BulkResult] = []
            async with _progress(console, tally), run:
                failures.extend([result async for result in run if not result.ok])
        elapsed = tally.elapsed
        exact = _exactly_once(fake, pairs)
    for result in failures[:MAX_FAILURES_SHOWN]:
        if result.error is not None:
            console.message(f"failed: {type(result.error).__name__}: {redact(str(result.error))}")
    for line in demo_summary(tally, rate_limit=args.rate, elapsed=elapsed, exact=exact):
        _out(line)
    return EXIT_OK if tally.ok == args.users else EXIT_FAILED


def _exactly_once(fake: FakeMonoCloud, pairs: list[tuple[str, str]]) -> int:
    """Users whose stored numbers are exactly their one demo number (no loss, no duplicate)."""
    return sum(
        [entry.get("phone") for entry in fake.users[uid]["phone_numbers"]] == [phone]
        for uid, phone in pairs
    )


def demo_summary(tally: Tally, *, rate_limit: float, elapsed: float, exact: int) -> list[str]:
    """The demo's summary table."""
    items_rate = tally.processed / elapsed if elapsed > 0 else 0.0
    share = items_rate / rate_limit
    request_rate = tally.requests / elapsed if elapsed > 0 else 0.0
    rows = [
        ("items", f"{tally.processed}"),
        ("succeeded", f"{tally.ok}"),
        ("failed", f"{tally.failed}"),
        ("retries", f"{tally.retries}"),
        ("429s", f"{tally.throttled}"),
        ("requests sent", f"{tally.requests} ({request_rate:.1f}/s)"),
        (
            "achieved rate",
            f"{items_rate:.1f} items/s = {share:.1%} of the {rate_limit:g}/s limit",
        ),
        ("elapsed", f"{elapsed:.2f} s"),
        ("server check", f"{exact} of {tally.processed} users have their number exactly once"),
    ]
    width = max(len(name) for name, _ in rows)
    return ["summary:"] + [f"  {name.ljust(width)}  {value}" for name, value in rows]


def _cmd_fake_server(args: argparse.Namespace, console: Console) -> int:
    return asyncio.run(_fake_server(args, console))


async def _fake_server(args: argparse.Namespace, console: Console) -> int:
    testing = importlib.import_module("monocloud_async.testing")
    # Only an explicit --api-key: the environment may hold a real key, which must not be
    # adopted by a fake and printed.
    api_key = args.api_key or "test-key"
    fake = testing.FakeMonoCloud(
        api_key=api_key, seed=args.seed, port=args.port, record_requests=False
    )
    try:
        await fake.start()
    except OSError as exc:
        raise UsageError(f"cannot listen on port {args.port}: {exc.strerror or exc}") from None
    try:
        if args.rate is not None:
            fake.rate_limit(args.rate)
        if args.fail_rate:
            fake.set_fault_rates(fail_rate=args.fail_rate)
        if args.latency:
            fake.delay(args.latency)
        users = args.users if args.users is not None else (100 if args.users_file else 0)
        rng = random.Random(args.seed)  # noqa: S311 - reproducible demo data
        pairs = [(fake.add_user(), demo_phone(rng)) for _ in range(users)]
        if args.users_file:
            _write_users_file(args.users_file, pairs)
        settings = [
            f"rate limit {args.rate:g}/s" if args.rate is not None else "no rate limit",
            f"{args.fail_rate:.0%} 503s",
            f"latency {args.latency:g} s",
        ]
        lines = [
            f"# MonoCloud fake server on {fake.domain} ({', '.join(settings)})",
            "# export these two variables in the shell that runs monocloud-async:",
            f"MONOCLOUD_MANAGEMENT_DOMAIN={shlex.quote(fake.domain)}",
            f"MONOCLOUD_MANAGEMENT_API_KEY={shlex.quote(api_key)}",
        ]
        if pairs:
            sample = ", ".join(uid for uid, _ in pairs[:2])
            lines.append(f"# {len(pairs)} users, e.g. {sample}")
        if args.users_file:
            lines.append(
                f"# wrote {args.users_file} (user_id,phone_number); try: "
                f"{PROG} add-phones {shlex.quote(args.users_file)}"
            )
        lines.append("# press Ctrl-C (or send SIGTERM) to stop")
        _out("\n".join(lines))
        await _until_signalled()
    finally:
        await fake.aclose()
    console.message(f"stopped after {fake.stats.requests} requests")
    return EXIT_OK


def _write_users_file(path: str, pairs: list[tuple[str, str]]) -> None:
    try:
        with open(path, "w", encoding="utf-8", newline="", opener=_private_opener) as f:
            writer = csv.writer(f)
            writer.writerow(["user_id", "phone_number"])
            writer.writerows(pairs)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


async def _until_signalled() -> None:
    """Return on SIGINT or SIGTERM (or when cancelled)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (ValueError, RuntimeError, NotImplementedError):
            continue  # not the main thread: KeyboardInterrupt or cancellation stops it
        installed.append(sig)
    try:
        await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


# --------------------------------------------------------------------------------------------
# Argument parsing


def _number(kind: type[int | float], *, low: float, low_ok: bool = True) -> Any:
    """An argparse type: a finite number of ``kind`` at least (or above) ``low``."""
    bound = f"at least {low:g}" if low_ok else f"above {low:g}"

    def convert(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (not low_ok and value == low):
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text!r}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in its messages
    return convert


def _fraction(text: str) -> float:
    value: float = _number(float, low=0.0)(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def _port(text: str) -> int:
    value: int = _number(int, low=0)(text)
    if value > 65535:  # noqa: PLR2004
        raise argparse.ArgumentTypeError(f"must be a port number (0-65535), got {text!r}")
    return value


def _add_shared(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes, before or after its name.

    The subcommands' copies default to SUPPRESS: argparse copies a subparser's defaults over
    the main parser's values, which would erase ``--domain X`` given before the command.
    """
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    group = parser.add_argument_group("shared options (before or after the command)")
    group.add_argument(
        "--domain",
        metavar="DOMAIN",
        help=f"tenant domain or URL (default: ${ENV_DOMAIN})",
        **({"default": None} | default),
    )
    group.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"management API key (default: ${ENV_API_KEY}); "
        "for fake-server, the key the server accepts (default: test-key)",
        **({"default": None} | default),
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log every request at DEBUG to stderr (never the key, never a full number)",
        **({"default": False} | default),
    )


_EPILOG: Final = """\
exit status: 0 all succeeded, 1 some items or the call failed, 2 usage, input or configuration
error, 130 interrupted. Phone numbers are never shown in full on the terminal; --output and
--journal files (your own data) hold them in full and are created readable by you only.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``monocloud-async``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Give MonoCloud users phone numbers, one or by the hundred thousand.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_shared(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, helptext: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=helptext,
            description=helptext,
            epilog=_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_shared(sub, suppress=True)
        return sub

    demo = command(
        "demo",
        "bulk-add phones to generated users on an in-process fake server with faults and a "
        "rate limit, then print a summary (no account, no network)",
    )
    demo.add_argument(
        "--users",
        type=_number(int, low=1),
        default=3000,
        metavar="N",
        help="users to create (default: 3000)",
    )
    demo.add_argument(
        "--rate",
        type=_number(float, low=0, low_ok=False),
        default=300.0,
        metavar="R",
        help="the fake tenant's rate limit, requests/s (default: 300)",
    )
    demo.add_argument(
        "--concurrency",
        type=_number(int, low=1),
        default=64,
        metavar="C",
        help="requests in flight at most (default: 64)",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the users, numbers and faults (default: 0)",
    )
    demo.set_defaults(handler=_cmd_demo)

    one = command("add-phone", "add a phone number to one user and show the user's numbers")
    one.add_argument("user_id", metavar="USER_ID")
    one.add_argument("phone", metavar="PHONE", help="E.164, e.g. +919988776655")
    one.add_argument("--verified", action="store_true", help="mark the number verified")
    one.add_argument(
        "--skip-restriction-checks",
        action="store_true",
        help="bypass the tenant's phone number restrictions",
    )
    one.add_argument(
        "--exist-ok",
        action="store_true",
        help="a number the user already has is success, not an error",
    )
    one.set_defaults(handler=_cmd_add_phone)

    bulk = command(
        "add-phones",
        "add phone numbers from a CSV (user_id,phone_number[,is_verified]) or JSON-lines file",
    )
    bulk.add_argument("file", metavar="FILE", help="the input file, or - for stdin")
    bulk.add_argument(
        "--concurrency",
        type=_number(int, low=1),
        default=16,
        metavar="N",
        help="requests in flight at most (default: 16)",
    )
    bulk.add_argument(
        "--rate",
        type=_number(float, low=0, low_ok=False),
        metavar="R",
        help="send at most R requests/s (client-side token bucket)",
    )
    bulk.add_argument(
        "--exist-ok",
        action="store_true",
        help="a number the user already has is success, not an error",
    )
    bulk.add_argument(
        "--journal",
        metavar="PATH",
        help="append each finished item here; a re-run skips what succeeded",
    )
    bulk.add_argument(
        "--output", metavar="PATH", help="write one JSON line per processed item (- for stdout)"
    )
    bulk.add_argument(
        "--redis-url",
        metavar="URL",
        help="share --rate with every process using this Redis (needs the redis extra)",
    )
    bulk.add_argument(
        "--limit-key",
        metavar="KEY",
        help="Redis key of the shared limit (default: monocloud-async:HOST)",
    )
    bulk.add_argument(
        "--shard",
        type=parse_shard,
        metavar="K/N",
        help="only the users whose CRC32(user_id) %% N == K (K from 0)",
    )
    bulk.set_defaults(handler=_cmd_add_phones)

    server = command(
        "fake-server", "serve a fake MonoCloud API on 127.0.0.1 until Ctrl-C or SIGTERM"
    )
    server.add_argument(
        "--port", type=_port, default=0, metavar="N", help="port to listen on (default: a free one)"
    )
    server.add_argument(
        "--rate",
        type=_number(float, low=0, low_ok=False),
        metavar="R",
        help="answer 429 above R requests/s",
    )
    server.add_argument(
        "--fail-rate",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="answer this share of requests with 503 (0 to 1)",
    )
    server.add_argument(
        "--latency",
        type=_number(float, low=0),
        default=0.0,
        metavar="S",
        help="seconds of latency added to every request",
    )
    server.add_argument(
        "--users",
        type=_number(int, low=0),
        metavar="N",
        help="create N users and print a few of their ids",
    )
    server.add_argument(
        "--users-file",
        metavar="PATH",
        help="write the users as a CSV for add-phones (100 users unless --users)",
    )
    server.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="seed of the users and numbers (default: 0)",
    )
    server.set_defaults(handler=_cmd_fake_server)
    return parser


# --------------------------------------------------------------------------------------------
# Entry points


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``monocloud-async`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    console = Console(sys.stderr)
    handler: Callable[[argparse.Namespace, Console], int] = args.handler
    with _logging_to(console, verbose=args.verbose):
        try:
            return handler(args, console)
        except (UsageError, errors.ConfigurationError) as exc:
            console.message(f"{PROG}: error: {exc}")
            return EXIT_USAGE
        except KeyboardInterrupt:
            console.message("interrupted")
            return EXIT_INTERRUPTED


def run() -> NoReturn:
    """Console entry point: exit with :func:`main`'s status."""
    sys.exit(main())
