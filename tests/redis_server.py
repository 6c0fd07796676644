"""A throwaway ``redis-server`` on a free loopback port, for the tests that need real Redis.

The binary is ``$REDIS_SERVER`` if set, else ``redis-server`` on ``PATH``. When it (or the
redis-py package) is missing the tests are skipped with the reason, except under CI (the
``CI`` environment variable set), where a missing dependency fails the run instead: a CI that
silently skips the Redis tests would prove nothing.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import IO

import attrs
import pytest

__all__ = ["RedisServer", "free_port", "require", "require_binary"]

_HOST = "127.0.0.1"


def require(condition: object, reason: str) -> None:
    """Skip the test for ``reason`` unless ``condition`` holds; under CI fail instead."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def require_binary() -> str:
    """The redis-server binary to run; skips (or under CI fails) when there is none."""
    binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    require(
        binary,
        "redis-server not found: install it (Debian: apt-get install redis-server) "
        "or set REDIS_SERVER to its path",
    )
    assert binary is not None  # for the type checker: require() did not return otherwise
    return binary


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@attrs.define
class RedisServer:
    """One ``redis-server`` process bound to 127.0.0.1, without persistence.

    ``start()`` waits until the server answers PING; ``stop()`` terminates it (SIGTERM) and
    ``kill()`` kills it (SIGKILL); either can be followed by ``start()`` on the same port.
    The ``a``-prefixed twins run in a thread, so a test's event loop keeps running meanwhile.
    """

    binary: str
    port: int = attrs.field(factory=free_port)
    _process: subprocess.Popen[bytes] | None = attrs.field(default=None, init=False)
    _log: IO[bytes] | None = attrs.field(default=None, init=False)

    @property
    def url(self) -> str:
        """The ``redis://`` URL of database 0."""
        return f"redis://{_HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        if self.running:
            return
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in _reap)
        self._process = subprocess.Popen(  # noqa: S603 (a fixed argument list, no shell)
            [
                self.binary,
                *("--port", str(self.port), "--bind", _HOST),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                *("--dir", tempfile.gettempdir()),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not _answers_ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                output = self._output()
                self.kill()
                msg = f"redis-server on port {self.port} did not start:\n{output}"
                raise RuntimeError(msg)
            time.sleep(0.01)

    def stop(self) -> None:
        """Terminate the server (SIGTERM, as a service manager would) and wait for it."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._reap()

    def kill(self) -> None:
        """Kill the server (SIGKILL: no goodbye to its clients) and wait for it."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self._reap()

    async def astart(self) -> None:
        """``start()`` without blocking the event loop."""
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        """``stop()`` without blocking the event loop."""
        await asyncio.to_thread(self.stop)

    async def akill(self) -> None:
        """``kill()`` without blocking the event loop."""
        await asyncio.to_thread(self.kill)

    def _output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
