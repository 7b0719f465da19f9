"""Name -> method class. Methods register themselves where they are defined."""

from __future__ import annotations

from dlmi.errors import UsageError

_METHODS: dict[str, type] = {}

# Built-in method name -> the module that registers it: names (for --help and choices) are
# known without importing torch; a method's module is imported when it is first used.
BUILTIN = {
    "adc": "adc", "dlmi": "dlmi_method", "dlmi-notf": "dlmi_method",
    "dlmi-shared-tau": "dlmi_method",
    "gbda": "dlmi_method", "dlmi-search": "dlmi_search", "gcg": "gcg", "pez": "pez", "pgd": "pgd",
    "random": "random_search", "reinforce": "reinforce", "soda": "soda",
    "soft-prompt": "soft_prompt",
}


def register(cls):
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    _METHODS[cls.name] = cls
    return cls


def method_names() -> list[str]:
    return sorted(set(_METHODS) | set(BUILTIN))


DEFAULT_METHOD = "dlmi-search"  # what `dlmi invert` and dlmi.invert use when none is named


def method_for(config=None) -> str:
    """The method a config belongs to (its exact class), or the default without a config."""
    if config is None:
        return DEFAULT_METHOD
    _load_builtin()
    for name, cls in _METHODS.items():
        if type(config) is cls.config_class:
            return name
    raise UsageError(f"no method takes a {type(config).__name__}: pass method=NAME")


def get_method(name: str) -> type:
    if name in BUILTIN and name not in _METHODS:
        import importlib

        importlib.import_module(f"dlmi.methods.{BUILTIN[name]}")
    if name not in _METHODS:
        raise UsageError(f"unknown method {name!r}; known methods: {', '.join(method_names())}")
    return _METHODS[name]


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators.
    import importlib

    for module in sorted(set(BUILTIN.values())):
        importlib.import_module(f"dlmi.methods.{module}")
