"""2. Decoding: response bytes -> ``User`` against JSON parsing alone.

The recorded example (``tests/samples/user.json``) is decoded with orjson (the ``orjson``
extra, what ``_convert.loads`` uses when it is importable) and with the standard library's
``json.loads``, called explicitly so both are measured in one run without uninstalling
anything. Each case runs in batches, interleaved batch by batch, and the medians are compared.

It also measures the converter itself before and after the two-tier rewrite: ``baseline`` is
a converter built the way ``_convert`` built it before (cattrs' generated functions with
detailed validation calling a strict hook per field and ``_structure_optional`` per nullable
field), ``current`` is ``_convert.structure_user``. A self-check first confirms both build
the same User.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import cattrs

from benchmarks._harness import SAMPLE, Row, Settings, median
from monocloud_async import _convert
from monocloud_async.models import ProblemDetails, User

try:
    import orjson
except ImportError:  # the benchmark still runs, without the orjson rows
    orjson = None  # type: ignore[assignment]


def baseline_converter() -> cattrs.Converter:
    """The converter as it was before: strict per-field hooks, cattrs' generated functions."""
    conv = cattrs.Converter(forbid_extra_keys=False)

    def strict(expected: type) -> Callable[[Any, Any], Any]:
        def hook(value: Any, _: Any) -> Any:
            if type(value) is not expected:
                raise TypeError(f"expected {expected.__name__}, got {type(value).__name__}")
            return value

        return hook

    def json_object(value: Any, _: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise TypeError("expected a JSON object")
        return value

    for primitive in (str, int, bool):
        conv.register_structure_hook(primitive, strict(primitive))
    conv.register_structure_hook_func(lambda t: t == dict[str, Any], json_object)
    conv.register_structure_hook(ProblemDetails, _convert.structure_problem)
    return conv


def timed_batches(
    cases: dict[str, Callable[[], Any]], rounds: int, batch: int
) -> dict[str, list[float]]:
    """Microseconds per call of each case, one batch of each per round, interleaved."""
    got: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases.items())
    for r in range(rounds):
        for name, fn in order if r % 2 == 0 else reversed(order):
            start = time.perf_counter()
            for _ in range(batch):
                fn()
            got[name].append((time.perf_counter() - start) / batch * 1e6)
    return got


def active_loads() -> str:
    """Which parser ``_convert.loads`` uses (it picks one on first use)."""
    _convert.loads(b"{}")
    parser = _convert._loads  # noqa: SLF001
    return f"{getattr(parser, '__module__', None) or 'orjson'}.{parser.__name__}"


async def run(settings: Settings) -> list[Row]:
    body = SAMPLE.read_bytes()
    baseline_hook = baseline_converter().get_structure_hook(User)
    doc = json.loads(body)
    if _convert.structure_user(doc) != baseline_hook(doc, User):
        raise AssertionError("the two-tier converter and the baseline disagree on the sample")

    cases: dict[str, Callable[[], Any]] = {
        "json.loads": lambda: json.loads(body),
        "json.loads + structure": lambda: _convert.structure_user(json.loads(body)),
        "structure (current)": lambda: _convert.structure_user(doc),
        "structure (baseline)": lambda: baseline_hook(doc, User),
    }
    if orjson is not None:
        cases["orjson.loads"] = lambda: orjson.loads(body)
        cases["orjson.loads + structure"] = lambda: _convert.structure_user(orjson.loads(body))
    rounds = max(settings.rounds, 5) * 3
    got = timed_batches(cases, rounds, batch=300 if settings.quick else 1500)
    med = {name: median(values) for name, values in got.items()}

    rows = []
    for parser in ("orjson", "json") if orjson is not None else ("json",):
        ratio = med[f"{parser}.loads + structure"] / med[f"{parser}.loads"]
        rows.append(
            Row(
                bench=f"2 decode with {parser}: bytes -> User vs {parser}.loads alone",
                measured=f"{med[f'{parser}.loads + structure']:.1f} us",
                baseline=f"{med[f'{parser}.loads']:.1f} us",
                ratio=ratio,
                target="<= 2.0",
                met=ratio <= 2.0,
                rounds=rounds,
                data={name: got[name] for name in got if name.startswith(parser)},
            )
        )
    speedup = med["structure (baseline)"] / med["structure (current)"]
    rows.append(
        Row(
            bench="2 decode: structure only, two-tier vs cattrs baseline",
            measured=f"{med['structure (current)']:.1f} us",
            baseline=f"{med['structure (baseline)']:.1f} us",
            ratio=med["structure (current)"] / med["structure (baseline)"],
            target="(info: before/after)",
            rounds=rounds,
            data={
                "current_us": got["structure (current)"],
                "baseline_us": got["structure (baseline)"],
                "speedup": speedup,
                "package_loads": active_loads(),
            },
        )
    )
    return rows
