"""Method options given as text (command line, config files): parsing and type checks."""

from __future__ import annotations

import json

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
    "vocab": (str, "tokens the prompt may use: all, no-special (default), ascii, printable"),
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


def opt(default, help: str, source: str = ""):
    """A config field with its documentation: `help` says what it does, `source` where the
    default comes from (Table 5, a paper, "measured" on our tuning targets, or "" = reasoned).
    `dlmi methods NAME` prints both."""
    from dataclasses import field

    return field(default=default, metadata={"help": help, "source": source})
