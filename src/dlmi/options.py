"""Method options given as text (command line, config files): parsing and type checks."""

from __future__ import annotations

import dataclasses
import json

from dlmi.errors import UsageError

# Flags shared by `invert` and `bench`, each mapped 1:1 to a config field (None = not given).
COMMON_FLAGS = {
    "prompt_length": (int, "prompt length N in tokens"),
    "steps": (int, "optimisation steps"),
    "samples": (int, "samples per step (Gumbel-Softmax samples, REINFORCE samples, ...)"),
    "lr": (float, "learning rate"),
    "tau0": (float, "initial (or fixed) temperature"),
    "eval_every": (int, "judge the prompt by greedy decoding every K steps"),
    "seed": (int, "random seed"),
    "time_limit": (float, "wall-clock limit in seconds: stop with the best prompt found so far"),
}


def option_hint(name: str) -> str:
    """How a user changes config field `name` from the command line."""
    if name in COMMON_FLAGS:
        return "--" + name.replace("_", "-")
    return f"--set {name}=VALUE"


def parse_value(text: str):
    """'3' -> 3, '0.1' -> 0.1, 'true' -> True, '[1,2]' -> [1, 2], else the string."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def coerce_overrides(config_class, overrides: dict) -> dict:
    """Check names against the config's fields and cast values to the fields' types."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    out = {}
    for key, value in overrides.items():
        if key not in fields:
            raise UsageError(f"unknown option {key!r}; options: {', '.join(sorted(fields))}")
        default = fields[key].default
        if default is None and fields[key].type in ("float | None", float | None):
            default = 0.0  # an optional number: checked as a float
        try:
            if isinstance(default, bool):
                value = value if isinstance(value, bool) else parse_value(str(value))
                if not isinstance(value, bool):
                    raise ValueError
            elif isinstance(default, int):
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
            elif isinstance(default, tuple):
                value = tuple(value) if isinstance(value, list | tuple) else (value,)
        except (TypeError, ValueError):
            raise UsageError(f"option {key} expects a {type(default).__name__}, "
                             f"got {value!r}") from None
        out[key] = value
    return out
