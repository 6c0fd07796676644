"""The package's own cattrs converter (never the global one) and JSON decoding.

Every response body is a User, so structuring one is on the hot path of every call. The
converter therefore structures attrs classes in two tiers:

- **Fast**: one straight-line function per class, generated from its fields, that checks
  each value's exact type inline (no hook call per field, no ``X | None`` dispatch) and
  calls the nested classes' fast functions directly. It accepts only documents it is sure
  of, and gives up (raises) at the first doubt: a missing required member, a wrong type, a
  type it has no inline check for.
- **Detailed**: cattrs' own generated function with detailed validation, run only when the
  fast tier gave up. It either builds the object after all or raises the
  ``ClassValidationError`` that names every bad field, so errors read exactly as before.

The fast tier accepts a subset of what the detailed one accepts and builds the same object,
so the two together behave exactly like the detailed tier alone, in about half the time of
the per-field-hook converter this replaced (see ``benchmarks/``). What is left is mostly the
attrs ``__init__`` of the seven frozen objects of a User.

Both tiers are strict: ``str``/``int``/``bool`` must be exactly that type (``"false"`` never
becomes ``True``), lists must be JSON arrays; unknown members and enum values are ignored.

Importing cattrs and generating the functions take about 20 ms together, so both happen on
first use (the first ``structure_user`` call or ``converter`` access), not at import; orjson
is likewise imported by the first ``loads``.
"""

from __future__ import annotations

import itertools
import json
import linecache
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Union, cast, get_args, get_origin

import attrs

from monocloud_async.models import ProblemDetails, User

if TYPE_CHECKING:
    import cattrs

__all__ = [
    "configure_converter",
    "converter",
    "loads",
    "make_converter",
    "structure_problem",
    "structure_user",
]


def loads(data: bytes) -> Any:
    """Parse a JSON document from bytes, with orjson when the ``orjson`` extra is installed."""
    return _loads(data)


def _first_loads(data: bytes) -> Any:
    # orjson (an optional extra, several times faster than json for our bodies) is imported on
    # first use: importing it costs milliseconds that an import of the package need not pay.
    global _loads  # noqa: PLW0603 - replaced once by the parser itself
    parse: Callable[[bytes], Any]
    try:
        from orjson import loads as parse  # noqa: PLC0415
    except ImportError:  # pragma: no cover - exercised when the extra is absent
        parse = json.loads
    _loads = parse
    return parse(data)


_loads: Callable[[bytes], Any] = _first_loads

_PRIMITIVES: Final = (str, int, bool)


def _strict(expected: type[Any]) -> Any:
    # cattrs' default primitive hooks coerce ("false" -> True, 1 -> "1"); an API that sends the
    # wrong type has a bug we want to hear about, not a silently wrong User.
    name = expected.__name__

    def hook(value: Any, _: Any) -> Any:
        if type(value) is not expected:
            raise TypeError(f"expected {name}, got {type(value).__name__}")
        return value

    hook.exact = expected  # type: ignore[attr-defined]  # the fast tier checks it inline
    return hook


def _structure_json_object(value: Any, _: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _structure_float(value: Any, _: Any) -> float:
    if type(value) not in (int, float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


_structure_float.exact = float  # type: ignore[attr-defined]  # ints take the detailed tier


def _is_list(t: Any) -> bool:
    return get_origin(t) is list


def _strict_list_factory(t: Any, conv: cattrs.Converter) -> Any:
    # cattrs turns any iterable into a list ("" and {} would become []); a JSON array only.
    from cattrs.cols import list_structure_factory  # noqa: PLC0415 - cattrs loads on first use

    inner = list_structure_factory(t, conv)

    def hook(value: Any, cl: Any) -> Any:
        if not isinstance(value, list):
            raise TypeError(f"expected a JSON array, got {type(value).__name__}")
        return inner(value, cl)

    (element,) = get_args(t) or (Any,)
    hook.element = element  # type: ignore[attr-defined]  # the fast tier builds it inline
    return hook


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


# --- the fast tier -------------------------------------------------------------------------


class _GiveUp(Exception):  # noqa: N818 - a signal between the tiers, never seen outside
    """The fast tier is not sure of a document; the detailed tier decides."""


_IDS: Final = itertools.count()


class _FastTier:
    """Generates the fast functions of one converter's attrs classes.

    The fast function of a class is generated only from hooks it can stand in for: our strict
    primitives, JSON objects and arrays, ``X | None`` as cattrs handles it, and classes that
    have a fast function themselves. A field whose hook is anything else (a hook registered
    later, a recursive class) leaves the class with cattrs' function alone: slower, not wrong.
    All functions share one namespace, so a class calls a nested class's function by name.
    """

    __slots__ = ("_building", "conv", "namespace")

    def __init__(self, conv: cattrs.Converter) -> None:
        self.conv = conv
        self.namespace: dict[str, Any] = {"_GiveUp": _GiveUp}
        self._building: set[type[Any]] = set()

    def function(self, cl: type[Any]) -> Callable[[Any], Any] | None:
        """A new fast function for attrs class ``cl``, or None when it cannot have one."""
        if cl in self._building or getattr(cl, "__parameters__", None):
            return None
        name = f"structure_{cl.__name__}_{next(_IDS)}"
        self._building.add(cl)
        try:
            source = self._source(cl, name)
        except _Unsupported:
            return None
        finally:
            self._building.discard(cl)
        filename = f"<monocloud_async fast structure {cl.__qualname__} ({name})>"
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        exec(compile(source, filename, "exec"), self.namespace)  # noqa: S102 - our own source
        fn: Callable[[Any], Any] = self.namespace[name]
        return fn

    def _source(self, cl: type[Any], name: str) -> str:
        """The source of ``def name(o)`` building ``cl`` from a dict (or _Unsupported)."""
        attrs.resolve_types(cl)
        # No check that o is a dict: o[key] raises for anything JSON gives but a dict.
        lines = [f"def {name}(o):"]
        args: list[str] = []
        for i, field in enumerate(attrs.fields(cl)):
            if not field.init:
                continue
            var = f"a{i}"
            lines.extend(self._field_lines(name, field, var))
            args.append(f"{field.alias}={var}" if field.kw_only else var)
        self.namespace[f"{name}_cl"] = cl
        lines.append(f"  return {name}_cl({', '.join(args)})")
        return "\n".join(lines) + "\n"

    def _field_lines(self, name: str, field: attrs.Attribute[Any], var: str) -> list[str]:
        # Members are looked up with o[key]: a try costs nothing until it catches (3.11+), so
        # a present member is as fast as it gets and an absent one costs one KeyError.
        key, default = field.name, cast("Any", field.default)
        check = self._check(field.type, var, f"{name}_{var}")
        if default is attrs.NOTHING:
            return [f"  {var} = o[{key!r}]", *check]
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            if default.takes_self:
                raise _Unsupported
            fresh = {list: "[]", dict: "{}"}.get(default.factory)
            if fresh is None:
                fresh = f"{name}_{var}_factory()"
                self.namespace[f"{name}_{var}_factory"] = default.factory
        else:
            fresh = f"{name}_{var}_default"
            self.namespace[fresh] = default
        return [
            "  try:",
            f"    {var} = o[{key!r}]",
            "  except KeyError:",
            f"    {var} = {fresh}",
            "  else:",
            *(f"  {line}" for line in check),
        ]

    def _check(self, t: Any, var: str, slot: str) -> list[str]:
        """Lines that check (and, for nested classes, build) ``var`` as type ``t``."""
        hook = self.conv.get_structure_hook(t)
        exact = getattr(hook, "exact", None)
        if exact is not None:
            # An int for a float makes the fast tier give up; the detailed tier converts it.
            return [f"  if {var}.__class__ is not {exact.__name__}: raise _GiveUp"]
        if hook is _structure_json_object:
            return [f"  if {var}.__class__ is not dict: raise _GiveUp"]
        optional = _optional_of(t)
        # cattrs' own handling of X | None (a private name: if it goes, so does the fast tier).
        if optional is not None and hook == getattr(self.conv, "_structure_optional", None):
            inner = self._check(optional, var, slot)
            return [f"  if {var} is not None:", *(f"  {line}" for line in inner)]
        element = getattr(hook, "element", None)
        if element is not None:  # arrays of classes only: they are all the models have
            fast = getattr(self.conv.get_structure_hook(element), "fast", None)
            if fast is None:
                raise _Unsupported
            self.namespace[slot] = fast
            # A comprehension costs a function call, and most of these arrays hold one entry.
            return [
                f"  if {var}.__class__ is not list: raise _GiveUp",
                f"  {var} = [{slot}({var}[0])] if len({var}) == 1 else [{slot}(e) for e in {var}]",
            ]
        fast = getattr(hook, "fast", None)
        if fast is not None:
            self.namespace[slot] = fast
            return [f"  {var} = {slot}({var})"]
        raise _Unsupported


class _Unsupported(Exception):  # noqa: N818 - internal signal of the generator
    """A field type the fast tier has no inline code for (the class keeps cattrs' hook)."""


def _optional_of(t: Any) -> Any:
    """``X`` for ``X | None`` (or ``Optional[X]``), else None."""
    args = get_args(t)
    if get_origin(t) not in (Union, type(int | None)) or len(args) != 2 or type(None) not in args:  # noqa: PLR2004
        return None
    return args[0] if args[1] is type(None) else args[1]


def _two_tier_factory(conv: cattrs.Converter) -> Callable[[Any], Any]:
    tier = _FastTier(conv)

    def factory(cl: Any) -> Any:
        detailed = conv.gen_structure_attrs_fromdict(cl)
        fast = tier.function(cl) if isinstance(cl, type) else None
        if fast is None:
            return detailed

        def structure(value: Any, _: Any = cl) -> Any:
            try:
                return fast(value)
            except Exception:  # noqa: BLE001 - any doubt: the detailed tier decides
                if not isinstance(value, dict):
                    raise TypeError(f"expected a JSON object, got {type(value).__name__}") from None
                return detailed(value, cl)

        structure.fast = fast  # type: ignore[attr-defined]
        structure.detailed = detailed  # type: ignore[attr-defined]
        return structure

    return factory


# --- the converter -------------------------------------------------------------------------


def make_converter() -> cattrs.Converter:
    """Return a new converter configured for MonoCloud's wire format."""
    import cattrs  # noqa: PLC0415 - cattrs loads on first use, not at import

    conv = cattrs.Converter(forbid_extra_keys=False)
    configure_converter(conv)
    return conv


def configure_converter(conv: cattrs.Converter) -> None:
    """Register monocloud-async's hooks on ``conv``: strict primitives, lenient problems.

    Attrs classes get the two-tier hook described in the module docstring.
    """
    for primitive in _PRIMITIVES:
        conv.register_structure_hook(primitive, _strict(primitive))
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook_func(lambda t: t == dict[str, Any], _structure_json_object)
    conv.register_structure_hook_factory(_is_list, lambda t: _strict_list_factory(t, conv))
    conv.register_structure_hook_factory(attrs.has, _two_tier_factory(conv))
    conv.register_structure_hook(ProblemDetails, structure_problem)


converter: cattrs.Converter
"""The package's converter (made on first use)."""
_made: list[cattrs.Converter] = []


def __getattr__(name: str) -> Any:
    if name == "converter":
        return _converter()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _converter() -> cattrs.Converter:
    if not _made:
        _made.append(make_converter())
        globals()["converter"] = _made[0]
    return _made[0]


def _user_hook() -> Any:
    return _converter().get_structure_hook(User)


def _first_user(doc: Any) -> User:
    # Generating the User functions takes milliseconds: on first use, not at import.
    global _fast_user  # noqa: PLW0603 - replaced once by the generated function
    _fast_user = _user_hook().fast
    return _fast_user(doc)


_fast_user: Callable[[Any], User] = _first_user


def structure_user(doc: Any) -> User:
    """Structure a decoded JSON document into a ``User`` (raises cattrs/TypeError on mismatch)."""
    try:
        return _fast_user(doc)
    except Exception:  # noqa: BLE001 - the detailed tier builds it or says what is wrong
        if not isinstance(doc, dict):
            raise TypeError(f"expected a JSON object, got {type(doc).__name__}") from None
        return _user_hook().detailed(doc, User)  # type: ignore[no-any-return]
