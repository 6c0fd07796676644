"""Server processes for the benchmarks, so no server shares the measured client's event loop.

Run as ``python -m benchmarks._servers raw`` or ``python -m benchmarks._servers fake``. Each
prints one JSON line ``{"url": ..., "control": ...}`` on stdout once it listens, then serves
until stdin closes (the parent exiting kills it that way too) or SIGTERM.

- ``raw``: a plain aiohttp app answering ``POST /api/users/{id}/phones`` with the recorded
  example User (``tests/samples/user.json``): the cheapest possible server, for the call
  overhead benchmark.
- ``fake``: ``FakeMonoCloud`` (``record_requests=False``) in which every user id exists (a
  fresh copy of one generated user, not stored, so every answer has the same size), plus a
  control app on a second port:

  - ``POST /config`` ``{"rate": R|null, "burst": B, "headers": bool, "latency": S,
    "fail_rate": F, "disconnect_rate": D, "at": seconds-from-now}``: change the fake, now or
    at a scheduled time on the server's own clock (no client-side timing error);
  - ``POST /reset``: zero the counters, restart the timeline clock, clear the events;
  - ``GET /stats``: counters, the server's CPU seconds since the reset, the applied changes (``events``) and a ``timeline`` of
    ``[t, requests, rate_limited, failures, disconnects]`` sampled every 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from monocloud_async.testing import FakeMonoCloud

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "samples" / "user.json"
HOST = "127.0.0.1"
SAMPLE_EVERY = 0.010


class GeneratedUsers(dict[str, dict[str, Any]]):
    """Users for any id: a stored user if there is one, else a fresh copy of a template."""

    def __init__(self, template: dict[str, Any]) -> None:
        super().__init__()
        self._template = template

    def get(self, key: str, default: Any = None) -> Any:  # noqa: ARG002 - every id exists
        user = super().get(key)
        if user is None:
            # Shallow: the fake only replaces top-level members and appends to phone_numbers.
            user = {**self._template, "user_id": key, "phone_numbers": []}
        return user


async def _listen(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def _until_stopped() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The parent holds our stdin; when it goes away (even killed), stdin reads EOF.
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def eof() -> None:
        await reader.read()
        stop.set()

    watcher = asyncio.create_task(eof())
    await stop.wait()
    watcher.cancel()


async def serve_raw() -> None:
    body = SAMPLE.read_bytes()
    counter = 0

    async def add_phone(request: web.Request) -> web.Response:
        nonlocal counter
        await request.read()
        counter += 1
        return web.Response(
            body=body,
            content_type="application/json",
            headers={"X-Request-Id": f"{counter:032x}"},
        )

    app = web.Application()
    app.router.add_post("/api/users/{user_id}/phones", add_phone)
    runner, port = await _listen(app)
    print(json.dumps({"url": f"http://{HOST}:{port}", "control": None}), flush=True)
    try:
        await _until_stopped()
    finally:
        await runner.cleanup()


class FakeRunner:
    """FakeMonoCloud plus its control app and the counters' timeline."""

    def __init__(self) -> None:
        self.fake = FakeMonoCloud(api_key="bench-key", record_requests=False)
        self.t0 = time.monotonic()
        self.cpu0 = time.process_time()
        self.timeline: list[list[float]] = []
        self.events: list[dict[str, Any]] = []

    async def start(self) -> int:
        await self.fake.start()
        template = self.fake.users.pop(self.fake.add_user())
        self.fake.users = GeneratedUsers(template)
        app = web.Application()
        app.router.add_post("/config", self.config)
        app.router.add_post("/reset", self.reset)
        app.router.add_get("/stats", self.stats)
        self.control, port = await _listen(app)
        self.sampler = asyncio.create_task(self.sample())
        return port

    async def aclose(self) -> None:
        self.sampler.cancel()
        await self.control.cleanup()
        await self.fake.aclose()

    async def sample(self) -> None:
        stats = self.fake.stats
        while True:
            now = time.monotonic() - self.t0
            row = [now, stats.requests, stats.rate_limited, stats.failures, stats.disconnects]
            self.timeline.append(row)
            await asyncio.sleep(SAMPLE_EVERY)

    def apply(self, change: dict[str, Any]) -> None:
        fake = self.fake
        if "rate" in change:
            if change["rate"] is None:
                fake.rate_limit(None)
            else:
                if change.get("fresh"):
                    fake.rate_limit(None)  # a new, full bucket
                fake.rate_limit(
                    change["rate"], change.get("burst"), headers=change.get("headers", True)
                )
        if "latency" in change:
            fake.delay(change["latency"])
        if "fail_rate" in change or "disconnect_rate" in change:
            fake.set_fault_rates(
                fail_rate=change.get("fail_rate", 0.0),
                disconnect_rate=change.get("disconnect_rate", 0.0),
                status=change.get("status", 503),
            )
        self.events.append({"t": time.monotonic() - self.t0, **change})

    async def config(self, request: web.Request) -> web.Response:
        change = await request.json()
        at = change.pop("at", None)
        if at is None:
            self.apply(change)
        else:
            asyncio.get_running_loop().call_later(at, self.apply, change)
        return web.json_response({"ok": True})

    async def reset(self, _: web.Request) -> web.Response:
        self.fake.stats.reset()
        self.t0 = time.monotonic()
        self.cpu0 = time.process_time()
        self.timeline.clear()
        self.events.clear()
        return web.json_response({"ok": True})

    async def stats(self, _: web.Request) -> web.Response:
        s = self.fake.stats
        return web.json_response(
            {
                "requests": s.requests,
                "rate_limited": s.rate_limited,
                "failures": s.failures,
                "disconnects": s.disconnects,
                "max_in_flight": s.max_in_flight,
                "cpu_s": time.process_time() - self.cpu0,
                "events": self.events,
                "timeline": self.timeline,
            }
        )


async def serve_fake() -> None:
    runner = FakeRunner()
    control_port = await runner.start()
    print(
        json.dumps(
            {
                "url": runner.fake.domain,
                "control": f"http://{HOST}:{control_port}",
                "api_key": runner.fake.api_key,
            }
        ),
        flush=True,
    )
    try:
        await _until_stopped()
    finally:
        await runner.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._servers")
    parser.add_argument("kind", choices=["raw", "fake"])
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_raw() if args.kind == "raw" else serve_fake())


if __name__ == "__main__":
    main()
