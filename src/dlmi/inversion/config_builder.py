"""One way to build a method's config, from every entry point (CLI flags, --set, bench files,
Python): (method, base config, overrides) -> a checked config of that method.

Values may come as text, JSON or YAML scalars; each is checked against the field's declared
type, and a bad one is a UsageError that names the option and how to change it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing

from dlmi.errors import UsageError
from dlmi.options import option_hint, parse_value


def build_config(method: str | None = None, base=None, overrides: dict | None = None,
                 where: str = "", hint=None) -> typing.Any:
    """The config of `method` (None: the method `base` belongs to, else the default method):
    `base` or the method's defaults, with `overrides` checked and applied.

    where: how the user gave the overrides, for messages (e.g. "bench config, gcg");
    hint(name): how the user changes an option there (default: the invert flag or --set).
    """
    from dlmi.methods.registry import get_method, method_for

    method = method or method_for(base)
    cls = get_method(method).config_class
    if base is not None and not isinstance(base, cls):
        raise UsageError(f"method {method!r} takes a {cls.__name__}, got {type(base).__name__}")
    values = coerce(cls, overrides or {}, f"{where or method}", hint)
    if base is None:
        return cls(**values)
    return dataclasses.replace(base, **values) if values else base


def field_types(cls) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def coerce(cls, overrides: dict, where: str, hint=None) -> dict:
    """Check names against a dataclass's fields and each value against the field's type.

    hint(name) says how the user changes that field (default: the method flag or --set)."""
    hint = hint or option_hint
    if not isinstance(overrides, dict):
        raise UsageError(f"{where}: expected a mapping of options, got {overrides!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    hints = field_types(cls)
    out = {}
    for key, value in overrides.items():
        if key not in names:
            more = " (see `dlmi methods NAME`)" if hint is option_hint else ""
            raise UsageError(f"{where}: unknown option {key!r}; options: "
                             f"{', '.join(sorted(names))}{more}")
        out[key] = _check(key, value, hints[key], where, hint)
    return out


def _check(key: str, value, kind, where: str, hint=option_hint):
    def bad(expected: str):
        return UsageError(f"{where}: option {key} expects {expected}, got {value!r}: "
                          f"change {hint(key)}")

    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        (kind,) = [a for a in args if a is not type(None)]
        args = typing.get_args(kind)  # of the type inside the Optional
    if isinstance(value, str) and kind is not str:
        value = parse_value(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad("an integer")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        if not math.isfinite(value):
            raise bad("a finite number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    origin = typing.get_origin(kind)
    if origin in (tuple, list):
        if isinstance(value, list | tuple):
            items = value
        elif origin is tuple:
            items = [value]  # one budget given as a scalar
        else:
            raise bad(f"a list of {getattr(args[0], '__name__', args[0])}")
        checked = [_check(key, v, args[0], where, hint) for v in items]
        return tuple(checked) if origin is tuple else checked
    if origin is dict and not isinstance(value, dict):
        raise bad("a mapping")
    if dataclasses.is_dataclass(kind):
        return kind(**coerce(kind, value, f"{where}, {key}", hint))
    return value
