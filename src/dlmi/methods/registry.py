"""Name -> method class. Methods register themselves where they are defined."""

from __future__ import annotations

from dlmi.errors import UsageError

_METHODS: dict[str, type] = {}


def register(cls):
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    _load_builtin()
    return sorted(_METHODS)


def get_method(name: str) -> type:
    _load_builtin()
    if name not in _METHODS:
        raise UsageError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")
    return _METHODS[name]


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators.
    from dlmi.methods import dlmi_method, gcg, pez, random_search, reinforce, soda  # noqa: F401
