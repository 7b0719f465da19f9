"""Method options as documentation: name, type, default, help and source of every config field
(`dlmi methods NAME`, `dlmi methods NAME --json`)."""

from __future__ import annotations

import dataclasses
import typing


def options_of(config_class) -> list[dict]:
    hints = typing.get_type_hints(config_class)
    out = []
    for f in dataclasses.fields(config_class):
        default = f.default
        if isinstance(default, tuple):
            default = list(default)
        out.append({
            "name": f.name,
            "type": _type_name(hints[f.name]),
            "default": default,
            "help": f.metadata.get("help", ""),
            "source": f.metadata.get("source", ""),
        })
    return out


def _type_name(kind) -> str:
    args = typing.get_args(kind)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return _type_name(inner[0]) + "?"
    if typing.get_origin(kind) is tuple:
        return f"list[{_type_name(args[0])}]"
    return getattr(kind, "__name__", str(kind))
