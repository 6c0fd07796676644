"""Tests of the ``monocloud-async`` command line, against FakeMonoCloud on 127.0.0.1.

``main()`` runs its own event loop (``asyncio.run``), so it is called from plain (sync) tests
and the fake is served from a second loop in a background thread (`ServedFake`). The few
things only a real process shows (signals, ``python -m``, import cost) run in subprocesses.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from monocloud_async._cli import (
    Tally,
    default_limit_key,
    main,
    parse_bool,
    parse_shard,
)
from monocloud_async._redact import mask_digits
from monocloud_async.testing import FakeMonoCloud, RecordedRequest

ENV_DOMAIN = "MONOCLOUD_MANAGEMENT_DOMAIN"
ENV_API_KEY = "MONOCLOUD_MANAGEMENT_API_KEY"
PHONES = ["+15551230001", "+15551230002", "+15551230003", "+15551230004"]


@attrs.define
class ServedFake:
    """A FakeMonoCloud served by its own event loop in a background thread."""

    fake: FakeMonoCloud
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread

    @classmethod
    def start(cls) -> ServedFake:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-server", daemon=True)
        thread.start()

        async def started() -> FakeMonoCloud:
            fake = FakeMonoCloud()
            await fake.start()
            return fake

        fake = asyncio.run_coroutine_threadsafe(started(), loop).result(10)
        return cls(fake, loop, thread)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.aclose(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def options(self) -> list[str]:
        return ["--domain", self.fake.domain, "--api-key", self.fake.api_key]

    def users(self, count: int) -> list[str]:
        return [self.fake.add_user(f"user{i}") for i in range(count)]

    def phone_posts(self, since: int = 0) -> list[RecordedRequest]:
        return [
            r
            for r in self.fake.requests[since:]
            if r.method == "POST" and r.path.endswith("/phones")
        ]

    def phones_of(self, user_id: str) -> list[str]:
        return [entry["phone"] for entry in self.fake.users[user_id]["phone_numbers"]]


@attrs.frozen
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture(name="served")
def _served(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServedFake]:
    """A running fake in a background thread; the environment holds no MonoCloud settings."""
    monkeypatch.delenv(ENV_DOMAIN, raising=False)
    monkeypatch.delenv(ENV_API_KEY, raising=False)
    served = ServedFake.start()
    yield served
    served.close()


@pytest.fixture(name="cli")
def _cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Ran]:
    """Run ``main()`` in-process and capture its exit status, stdout and stderr."""

    def run(*argv: str) -> Ran:
        code = main(list(argv))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


def write_csv(
    path: Path, rows: list[tuple[str, ...]], header: str = "user_id,phone_number"
) -> Path:
    path.write_text(header + "\n" + "".join(",".join(row) + "\n" for row in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def ok_line(user_id: str, phone: str, attempts: int = 1) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "phone_number": phone,
        "ok": True,
        "attempts": attempts,
        "error": None,
    }


def assert_no_full_number(text: str) -> None:
    """No "+" followed by more than four digits, once request ids (hex) are left out."""
    assert re.search(r"\+\d{5,}", re.sub(r"\b[0-9a-f*]{32}\b", "", text)) is None


def run_cli_process(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONOCLOUD_")}
    return subprocess.Popen(  # noqa: S603 - this interpreter, our own module
        [sys.executable, "-m", "monocloud_async", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


class TestHelpers:
    @pytest.mark.parametrize(
        ("number", "masked"),
        [("+919988776655", "+********6655"), ("+15551230001", "+*******0001"), ("+123", "+***")],
    )
    def test_mask_digits(self, number, masked):
        """Keeps only the last four digits (all masked when there are four or fewer)."""
        assert masked == mask_digits(number)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("true", True), ("YES", True), ("1", True), (1, True), (True, True), ("false", False),
         ("no", False), ("0", False), ("", False), (" ", False), (None, False), (False, False)],
    )  # fmt: skip
    def test_parse_bool(self, value, expected):
        """Accepts true/false/1/0/yes/no/empty in any case."""
        assert expected == parse_bool(value, "is_verified")

    @pytest.mark.parametrize("value", ["maybe", "2", 2, "+15551230001"])
    def test_parse_bool_refuses_and_masks(self, value):
        """Refuses anything else, naming the field without showing a full number."""
        with pytest.raises(ValueError, match="is_verified") as info:
            parse_bool(value, "is_verified")
        assert "+15551230001" not in str(info.value)

    def test_parse_shard(self):
        """Parses K/N with K counted from 0."""
        assert (2, 3) == parse_shard("2/3")

    def test_default_limit_key(self):
        """Derives the Redis key from the tenant's host (and port)."""
        assert "monocloud-async:acme.us.monocloud.com" == default_limit_key("acme.us.monocloud.com")
        assert "monocloud-async:127.0.0.1:8080" == default_limit_key("http://127.0.0.1:8080/")

    def test_progress_line(self):
        """Shows done/total, rate, outcomes, retries, 429s and an ETA."""
        tally = Tally(total=100, started=0.0)
        tally.ok, tally.failed, tally.retries, tally.throttled = 40, 10, 3, 2
        line = tally.line(10.0, bar=False)
        assert "50/100 (50%)" in line
        assert "5.0 items/s" in line
        assert "40 ok, 10 failed" in line
        assert "3 retries, 2 429s" in line
        assert "ETA 10s" in line


class TestGlobalOptions:
    @pytest.mark.parametrize("where", ["before", "after"])
    def test_before_or_after_the_command(self, served, cli, where):
        """--domain/--api-key/--verbose work before and after the command name."""
        (user,) = served.users(1)
        command = ["add-phone", user, PHONES[0]]
        argv = (
            [*served.options, "-v", *command]
            if where == "before"
            else [*command, *served.options, "-v"]
        )
        ran = cli(*argv)
        assert 0 == ran.code
        assert [PHONES[0]] == served.phones_of(user)
        assert "DEBUG" in ran.err

    def test_options_on_both_sides(self, served, cli):
        """An option given after the command overrides the one given before it."""
        (user,) = served.users(1)
        ran = cli("--api-key", "wrong", "add-phone", user, PHONES[0], *served.options)
        assert 0 == ran.code

    def test_environment(self, served, cli, monkeypatch):
        """Domain and key fall back to the environment variables."""
        (user,) = served.users(1)
        monkeypatch.setenv(ENV_DOMAIN, served.fake.domain)
        monkeypatch.setenv(ENV_API_KEY, served.fake.api_key)
        assert 0 == cli("add-phone", user, PHONES[0]).code

    @pytest.mark.parametrize("missing", ["--domain", "--api-key"])
    def test_missing_configuration_exits_2(self, served, cli, missing):
        """A missing domain or key is a configuration error (exit 2) naming the option."""
        options = served.options
        at = options.index(missing)
        ran = cli(*options[:at], *options[at + 2 :], "add-phone", "u", PHONES[0])
        assert 2 == ran.code
        assert missing in ran.err
        assert [] == served.fake.requests

    def test_verbose_never_shows_the_number(self, served, cli):
        """--verbose logs each request at DEBUG, with the number masked."""
        (user,) = served.users(1)
        ran = cli("add-phone", user, PHONES[0], "--verbose", *served.options)
        assert f"POST users/{user}/phones -> 200" in ran.err
        assert PHONES[0] not in ran.err + ran.out

    @pytest.mark.parametrize(("argv", "code"), [(["--help"], 0), ([], 2), (["nope"], 2)])
    def test_usage(self, cli, argv, code):
        """--help exits 0; no or an unknown command exits 2."""
        assert code == cli(*argv).code


class TestAddPhone:
    def test_success(self, served, cli):
        """Adds the number and prints the user's numbers masked to the last four digits."""
        (user,) = served.users(1)
        ran = cli(
            "add-phone", user, PHONES[0], "--verified", "--skip-restriction-checks", *served.options
        )
        assert 0 == ran.code
        assert mask_digits(PHONES[0]) in ran.out
        assert "yes" in ran.out
        assert PHONES[0] not in ran.out + ran.err
        body = served.phone_posts()[0].json
        assert {
            "phone_number": PHONES[0],
            "is_verified": True,
            "skip_restriction_checks": True,
        } == body

    def test_wrong_key_exits_1(self, served, cli):
        """A 401 prints the error with status and request id, exit 1."""
        (user,) = served.users(1)
        ran = cli(
            "add-phone", user, PHONES[0], "--domain", served.fake.domain, "--api-key", "wrong"
        )
        assert 1 == ran.code
        assert "UnauthorizedError" in ran.err
        assert "status: 401" in ran.err
        assert "request id: " in ran.err

    def test_unknown_user_exits_1(self, served, cli):
        """A 404 prints the problem detail, exit 1."""
        ran = cli("add-phone", "nobody", PHONES[0], *served.options)
        assert 1 == ran.code
        assert "NotFoundError" in ran.err
        assert "detail: User 'nobody' was not found." in ran.err

    def test_invalid_number_exits_2(self, served, cli):
        """A number that is not E.164 is a usage error; nothing is sent."""
        ran = cli("add-phone", "u", "0123456789", *served.options)
        assert 2 == ran.code
        assert "E.164" in ran.err
        assert "0123456789" not in ran.err
        assert [] == served.fake.requests

    def test_exist_ok(self, served, cli):
        """A number the user has is an error (exit 1) unless --exist-ok; never shown in full."""
        (user,) = served.users(1)
        assert 0 == cli("add-phone", user, PHONES[0], *served.options).code
        again = cli("add-phone", user, PHONES[0], *served.options)
        assert 1 == again.code
        assert "DuplicatePhoneNumber" in again.err
        assert PHONES[0] not in again.err
        assert 0 == cli("add-phone", user, PHONES[0], "--exist-ok", *served.options).code
        assert [PHONES[0]] == served.phones_of(user)


class TestAddPhonesInput:
    def test_csv(self, served, cli, tmp_path):
        """A CSV with is_verified values: every item ok, one output line each, exit 0."""
        users = served.users(3)
        rows = [
            (users[0], PHONES[0], "yes"),
            (users[1], PHONES[1], ""),
            (users[2], PHONES[2], "FALSE"),
        ]
        source = write_csv(tmp_path / "in.csv", rows, "user_id,phone_number,is_verified")
        out = tmp_path / "out.jsonl"
        ran = cli("add-phones", str(source), "--output", str(out), *served.options)
        assert 0 == ran.code
        expected = [ok_line(u, p) for u, p, _ in rows]
        assert sorted(expected, key=str) == sorted(read_jsonl(out), key=str)
        assert [True, False, False] == [
            served.fake.users[u]["phone_numbers"][0]["verified"] for u in users
        ]
        assert_no_full_number(ran.err + ran.out)
        assert "3 ok, 0 failed" in ran.err

    def test_jsonl_detected_by_content(self, served, cli, tmp_path):
        """JSON lines are recognised by content whatever the extension."""
        users = served.users(2)
        source = tmp_path / "items.txt"
        source.write_text(
            json.dumps({"user_id": users[0], "phone_number": PHONES[0], "is_verified": True})
            + "\n\n"
            + json.dumps({"user_id": users[1], "phone_number": PHONES[1], "extra": 1})
            + "\n"
        )
        out = tmp_path / "out.jsonl"
        assert 0 == cli("add-phones", str(source), "--output", str(out), *served.options).code
        assert {users[0], users[1]} == {line["user_id"] for line in read_jsonl(out)}
        assert served.fake.users[users[0]]["phone_numbers"][0]["verified"] is True

    def test_stdin(self, served, cli, tmp_path, monkeypatch):
        """``-`` reads the input from stdin."""
        users = served.users(2)
        data = f"user_id,phone_number\n{users[0]},{PHONES[0]}\n{users[1]},{PHONES[1]}\n"
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.encode())))
        out = tmp_path / "out.jsonl"
        assert 0 == cli("add-phones", "-", "--output", str(out), *served.options).code
        assert 2 == len(read_jsonl(out))

    @pytest.mark.parametrize(
        "header",
        ["userid,phone_number", "user_id", "user_id,phone_number,phone", "user0,+15551230001"],
        ids=["typo", "missing", "unknown", "no-header"],
    )
    def test_bad_header_exits_2(self, served, cli, tmp_path, header):
        """A bad CSV header is exit 2 naming line 1, before any request."""
        source = write_csv(tmp_path / "in.csv", [("user0", PHONES[1])], header)
        ran = cli("add-phones", str(source), *served.options)
        assert 2 == ran.code
        assert "line 1" in ran.err
        assert_no_full_number(ran.err)
        assert [] == served.fake.requests

    @pytest.mark.parametrize("kind", ["missing", "directory", "empty"])
    def test_unreadable_input_exits_2(self, served, cli, tmp_path, kind):
        """A missing, unreadable or empty input is exit 2 before any request."""
        path = tmp_path / "in.csv"
        if kind == "directory":
            path.mkdir()
        elif kind == "empty":
            path.write_text("")
        ran = cli("add-phones", str(path), *served.options)
        assert 2 == ran.code
        assert str(path) in ran.err
        assert [] == served.fake.requests

    @pytest.mark.parametrize(("fmt", "bad_lines"), [("csv", (3, 4)), ("jsonl", (2, 3))])
    def test_malformed_line_fails_alone(self, served, cli, tmp_path, fmt, bad_lines):
        """A malformed line is that item's failure, naming its line; the rest go on; exit 1."""
        users = served.users(2)
        if fmt == "csv":
            text = f"user_id,phone_number,is_verified\n{users[0]},{PHONES[0]},\nbad\nx,{PHONES[2]},maybe\n{users[1]},{PHONES[1]},1\n"
        else:
            good = [
                json.dumps({"user_id": u, "phone_number": p})
                for u, p in zip(users, PHONES, strict=False)
            ]
            text = f'{good[0]}\n{{"user_id": "bad"\n["x"]\n{good[1]}\n'
        source = tmp_path / f"in.{fmt}"
        source.write_text(text)
        out = tmp_path / "out.jsonl"
        ran = cli("add-phones", str(source), "--output", str(out), *served.options)
        assert 1 == ran.code
        failed = sorted(
            (line for line in read_jsonl(out) if not line["ok"]),
            key=lambda x: x["error"]["message"],
        )
        assert 2 == len(failed)
        assert [f"line {n}: " for n in bad_lines] == [
            f["error"]["message"][: len("line 2: ")] for f in failed
        ]
        assert {"InvalidRequestError"} == {f["error"]["type"] for f in failed}
        assert {0} == {f["attempts"] for f in failed}
        assert 2 == len(served.phone_posts())
        assert "line 3" in ran.err

    def test_api_failure_is_an_item_failure(self, served, cli, tmp_path):
        """An unknown user fails that item with the API error in the output; exit 1."""
        (user,) = served.users(1)
        source = write_csv(tmp_path / "in.csv", [(user, PHONES[0]), ("nobody", PHONES[1])])
        out = tmp_path / "out.jsonl"
        ran = cli("add-phones", str(source), "--output", str(out), *served.options)
        assert 1 == ran.code
        (failed,) = [line for line in read_jsonl(out) if not line["ok"]]
        assert {"user_id": "nobody", "phone_number": PHONES[1], "ok": False, "attempts": 1} == {
            k: v for k, v in failed.items() if k != "error"
        }
        assert ("NotFoundError", 404) == (failed["error"]["type"], failed["error"]["status"])
        assert "failed: line 3: NotFoundError" in ran.err

    def test_unauthorized_stops_the_run(self, served, cli, tmp_path):
        """A 401 dooms every item: the run stops with the error, exit 1."""
        users = served.users(3)
        source = write_csv(
            tmp_path / "in.csv", [(u, p) for u, p in zip(users, PHONES, strict=False)]
        )
        ran = cli("add-phones", str(source), "--domain", served.fake.domain, "--api-key", "wrong")
        assert 1 == ran.code
        assert "UnauthorizedError" in ran.err

    def test_rate(self, served, cli, tmp_path):
        """--rate paces the requests with a client-side token bucket."""
        users = served.users(8)
        source = write_csv(tmp_path / "in.csv", [(u, PHONES[0]) for u in users])
        assert (
            0
            == cli(
                "add-phones", str(source), "--rate", "20", "--concurrency", "8", *served.options
            ).code
        )
        times = [r.time for r in served.phone_posts()]
        assert max(times) - min(times) >= 0.3  # 8 requests at 20/s: 7 intervals of 0.05 s


class TestFiles:
    @pytest.mark.parametrize(
        ("journal", "output"), [("in.csv", None), (None, "in.csv"), ("j.jsonl", "j.jsonl")]
    )
    def test_clobbering_is_refused(self, served, cli, tmp_path, journal, output):
        """--journal and --output may not be the input file or each other (exit 2)."""
        (user,) = served.users(1)
        source = write_csv(tmp_path / "in.csv", [(user, PHONES[0])])
        before = source.read_text()
        (tmp_path / "j.jsonl").touch()
        options = [
            *(["--journal", str(tmp_path / journal)] if journal else []),
            *(["--output", str(tmp_path / output)] if output else []),
        ]
        ran = cli("add-phones", str(source), *options, *served.options)
        assert 2 == ran.code
        assert "same file" in ran.err
        assert before == source.read_text()
        assert [] == served.fake.requests


class TestJournal:
    def test_rerun_skips_successes_and_retries_failures(self, served, cli, tmp_path):
        """Journaled successes are not re-sent, failures are, and a torn last line is ignored."""
        users = served.users(3)
        # users[0] got its phone in the "earlier run" the journal remembers.
        served.fake.users[users[0]]["phone_numbers"].append(
            {"id": "x", "phone": PHONES[0], "primary": True, "verified": False}
        )
        journal = tmp_path / "journal.jsonl"
        journal.write_text(
            json.dumps(ok_line(users[0], PHONES[0]))
            + "\n"
            + json.dumps({**ok_line(users[1], PHONES[1]), "ok": False})
            + '\n{"user_id": "user2", "phone_n'
        )
        source = write_csv(
            tmp_path / "in.csv", [(u, p) for u, p in zip(users, PHONES, strict=False)]
        )
        out = tmp_path / "out.jsonl"
        ran = cli(
            "add-phones",
            str(source),
            "--journal",
            str(journal),
            "--output",
            str(out),
            *served.options,
        )
        assert 0 == ran.code
        assert {f"/api/users/{u}/phones" for u in users[1:]} == {
            r.path for r in served.phone_posts()
        }
        assert {users[1], users[2]} == {line["user_id"] for line in read_jsonl(out)}
        assert [[PHONES[0]], [PHONES[1]], [PHONES[2]]] == [served.phones_of(u) for u in users]
        lines = journal.read_text().splitlines()
        assert 5 == len(lines)
        assert {users[1], users[2]} == {json.loads(line)["user_id"] for line in lines[3:]}

    def test_rerun_of_everything_sends_nothing(self, served, cli, tmp_path):
        """A second run over the same journal sends nothing; the files are private (0600)."""
        users = served.users(3)
        source = write_csv(
            tmp_path / "in.csv", [(u, p) for u, p in zip(users, PHONES, strict=False)]
        )
        journal = tmp_path / "journal.jsonl"
        out = tmp_path / "out.jsonl"
        assert (
            0
            == cli(
                "add-phones",
                str(source),
                "--journal",
                str(journal),
                "--output",
                str(out),
                *served.options,
            ).code
        )
        assert (0o600, 0o600) == (journal.stat().st_mode & 0o777, out.stat().st_mode & 0o777)
        sent = len(served.fake.requests)
        ran = cli("add-phones", str(source), "--journal", str(journal), *served.options)
        assert 0 == ran.code
        assert sent == len(served.fake.requests)
        assert "3 skipped" in ran.err

    def test_interrupted_run_resumes(self, served, cli, tmp_path):
        """Ctrl-C mid-run exits 130 with the journal intact; a re-run re-sends no success."""
        users = served.users(30)
        source = write_csv(tmp_path / "in.csv", [(u, PHONES[0]) for u in users])
        journal = tmp_path / "journal.jsonl"
        served.fake.delay(0.2)
        proc = run_cli_process(
            "add-phones",
            str(source),
            "--journal",
            str(journal),
            "--concurrency",
            "2",
            *served.options,
        )
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and (
                not journal.exists() or journal.read_text().count("\n") < 2
            ):
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
            proc.wait()
        assert 130 == proc.returncode, err
        assert "interrupted" in err
        first = read_jsonl(journal)  # every line whole
        done = {line["user_id"] for line in first if line["ok"]}
        assert 2 <= len(done) < len(users)
        served.fake.delay(0)
        mark = len(served.fake.requests)
        assert 0 == cli("add-phones", str(source), "--journal", str(journal), *served.options).code
        resent = {r.path.split("/")[3] for r in served.phone_posts(mark)}
        assert set() == resent & done
        assert [[PHONES[0]]] * len(users) == [served.phones_of(u) for u in users]

    def test_journal_in_use_exits_2(self, served, cli, tmp_path):
        """Two runs cannot share a journal at once."""
        fcntl = pytest.importorskip("fcntl")
        journal = tmp_path / "journal.jsonl"
        source = write_csv(tmp_path / "in.csv", [("u", PHONES[0])])
        with journal.open("a") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)
            ran = cli("add-phones", str(source), "--journal", str(journal), *served.options)
        assert 2 == ran.code
        assert "in use" in ran.err


class TestShard:
    def test_shards_partition_the_input(self, served, cli, tmp_path):
        """Shards 0..N-1 are disjoint, cover every row, and follow CRC32(user_id) % N."""
        users = served.users(30)
        source = write_csv(tmp_path / "in.csv", [(u, PHONES[0]) for u in users])
        seen: list[set[str]] = []
        for k in range(3):
            out = tmp_path / f"out{k}.jsonl"
            assert (
                0
                == cli(
                    "add-phones",
                    str(source),
                    "--shard",
                    f"{k}/3",
                    "--output",
                    str(out),
                    *served.options,
                ).code
            )
            ids = {line["user_id"] for line in read_jsonl(out)}
            assert all(zlib.crc32(u.encode()) % 3 == k for u in ids)
            seen.append(ids)
        assert set(users) == set().union(*seen)
        assert len(users) == sum(len(ids) for ids in seen)

    @pytest.mark.parametrize("shard", ["3/3", "1/0", "-1/2", "a/b", "1"])
    def test_invalid_shard_exits_2(self, served, cli, tmp_path, shard):
        """K/N outside 0 <= K < N is a usage error."""
        source = write_csv(tmp_path / "in.csv", [("u", PHONES[0])])
        assert 2 == cli("add-phones", str(source), "--shard", shard, *served.options).code
        assert [] == served.fake.requests


class TestRedis:
    def test_redis_url_needs_rate(self, served, cli, tmp_path):
        """--redis-url without --rate is exit 2."""
        source = write_csv(tmp_path / "in.csv", [("u", PHONES[0])])
        ran = cli(
            "add-phones", str(source), "--redis-url", "redis://127.0.0.1:6379/0", *served.options
        )
        assert 2 == ran.code
        assert "--rate" in ran.err
        assert [] == served.fake.requests

    def test_missing_extra_exits_2(self, served, cli, tmp_path, monkeypatch):
        """Without the redis support installed, exit 2 naming the redis extra."""
        monkeypatch.setitem(sys.modules, "monocloud_async._redis", None)
        source = write_csv(tmp_path / "in.csv", [("u", PHONES[0])])
        ran = cli(
            "add-phones",
            str(source),
            "--rate",
            "5",
            "--redis-url",
            "redis://127.0.0.1:6379/0",
            *served.options,
        )
        assert 2 == ran.code
        assert "monocloud-async[redis]" in ran.err
        assert [] == served.fake.requests

    @pytest.mark.parametrize(
        ("key_option", "key", "shard", "share"),
        [([], None, [], 0.5), (["--limit-key", "fleet"], "fleet", ["--shard", "0/1"], 1.0)],
    )
    def test_shared_limiter(
        self, served, cli, tmp_path, monkeypatch, key_option, key, shard, share
    ):
        """The Redis limiter gets the URL, key (from the domain by default), rate and 1/N share."""
        made: list[Any] = []

        class RedisRateLimiter:
            def __init__(self, url: str, *, key: str, rate: float, fallback_share: float) -> None:
                self.args, self.acquired, self.closed = (url, key, rate), 0, False
                self.share = fallback_share
                made.append(self)

            async def acquire(self) -> None:
                self.acquired += 1

            async def aclose(self) -> None:
                self.closed = True

        monkeypatch.setitem(
            sys.modules,
            "monocloud_async._redis",
            types.SimpleNamespace(RedisRateLimiter=RedisRateLimiter),
        )
        users = served.users(2)
        source = write_csv(tmp_path / "in.csv", [(u, PHONES[0]) for u in users])
        url = "redis://127.0.0.1:6379/0"
        assert (
            0
            == cli(
                "add-phones",
                str(source),
                "--rate",
                "50",
                "--redis-url",
                url,
                *key_option,
                *shard,
                *served.options,
            ).code
        )
        (limiter,) = made
        assert share == limiter.share
        expected_key = key or "monocloud-async:" + served.fake.domain.removeprefix("http://")
        assert (url, expected_key, 50.0) == limiter.args
        assert 2 <= limiter.acquired
        assert limiter.closed


class TestDemo:
    def test_small_run(self, cli, monkeypatch):
        """The demo adds every number exactly once and prints the summary; exit 0."""
        ran = cli("demo", "--users", "200", "--rate", "1000", "--seed", "7")
        assert 0 == ran.code, ran.err
        table = dict(
            re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in ran.out.splitlines()[1:]
        )
        assert ("200", "200", "0") == (table["items"], table["succeeded"], table["failed"])
        assert {"retries", "429s", "requests sent", "achieved rate", "elapsed"} <= table.keys()
        assert "of the 1000/s limit" in table["achieved rate"]
        assert "200 of 200 users have their number exactly once" == table["server check"]
        assert "+1" not in ran.out + ran.err


class TestFakeServer:
    def test_serves_until_sigint(self, cli, tmp_path):
        """Prints export-ready settings, serves add-phones, and exits 0 on SIGINT."""
        users_file = tmp_path / "users.csv"
        proc = run_cli_process("fake-server", "--users", "3", "--users-file", str(users_file))
        try:
            assert proc.stdout is not None
            settings: dict[str, str] = {}
            for line in proc.stdout:
                name, sep, value = line.strip().partition("=")
                if sep and not name.startswith("#"):
                    settings[name] = value
                if "Ctrl-C" in line:
                    break
            assert settings[ENV_DOMAIN].startswith("http://127.0.0.1:")
            assert "test-key" == settings[ENV_API_KEY]
            ran = cli(
                "add-phones",
                str(users_file),
                "--domain",
                settings[ENV_DOMAIN],
                "--api-key",
                "test-key",
            )
            assert 0 == ran.code
            assert "3 ok" in ran.err
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
        finally:
            proc.kill()
            proc.communicate()
        assert 0 == proc.returncode


class TestImports:
    def test_cli_is_imported_lazily(self):
        """Importing the package imports neither the CLI nor the testing kit; the CLI not the kit."""
        code = (
            "import sys, monocloud_async;"
            "a = 'monocloud_async._cli' in sys.modules;"
            "import monocloud_async._cli;"
            "print(a, 'monocloud_async.testing' in sys.modules)"
        )
        out = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert "False False" == out.strip()
