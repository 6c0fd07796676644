"""The package's own cattrs converter (never the global one) and JSON decoding."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
import cattrs

from monocloud_async.models import ProblemDetails, User

__all__ = ["converter", "loads", "make_converter", "structure_problem", "structure_user"]

loads: Callable[[bytes], Any]
"""Parse a JSON document from bytes, with orjson when the ``orjson`` extra is installed."""
try:  # orjson is an optional extra: several times faster than json for our bodies.
    from orjson import loads
except ImportError:  # pragma: no cover - exercised when the extra is absent
    loads = json.loads


def _strict(expected: type[Any]) -> Any:
    # cattrs' default primitive hooks coerce ("false" -> True, 1 -> "1"); an API that sends the
    # wrong type has a bug we want to hear about, not a silently wrong User.
    name = expected.__name__

    def hook(value: Any, _: Any) -> Any:
        if type(value) is not expected:
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return value

    return hook


def _structure_json_object(value: Any, _: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _structure_float(value: Any, _: Any) -> float:
    if type(value) not in (int, float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


_PROBLEM_FIELDS = frozenset(a.name for a in attrs.fields(ProblemDetails)) - {"extensions"}


def structure_problem(doc: Any, _: Any = None) -> ProblemDetails:
    """Build ``ProblemDetails`` leniently: wrong-typed members move to ``extensions``."""
    if not isinstance(doc, dict):
        raise TypeError(f"expected a JSON object, got {type(doc).__name__}")
    known: dict[str, Any] = {}
    extensions: dict[str, Any] = {}
    for key, value in doc.items():
        if key in _PROBLEM_FIELDS and _problem_member_ok(key, value):
            known[key] = value
        else:
            extensions[key] = value
    return ProblemDetails(**known, extensions=extensions)


def _problem_member_ok(key: str, value: Any) -> bool:
    if key == "status":
        return type(value) is int
    return value is None or isinstance(value, str)


def make_converter() -> cattrs.Converter:
    """Return a new converter configured for MonoCloud's wire format."""
    conv = cattrs.Converter(forbid_extra_keys=False)
    configure_converter(conv)
    return conv


def configure_converter(conv: cattrs.Converter) -> None:
    """Register monocloud-async's hooks on ``conv``: strict primitives, lenient problems."""
    for primitive in (str, int, bool):
        conv.register_structure_hook(primitive, _strict(primitive))
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook_func(lambda t: t == dict[str, Any], _structure_json_object)
    conv.register_structure_hook(ProblemDetails, structure_problem)


converter = make_converter()
_structure_user = converter.get_structure_hook(User)


def structure_user(doc: Any) -> User:
    """Structure a decoded JSON document into a ``User`` (raises cattrs/TypeError on mismatch)."""
    if not isinstance(doc, dict):
        raise TypeError(f"expected a JSON object, got {type(doc).__name__}")
    return _structure_user(doc, User)  # type: ignore[no-any-return]
