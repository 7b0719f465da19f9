"""The key/value cache across transformers versions: the argument and output field were named
`past_key_values` up to 5.x, `cache` from then on (the old name warns and goes in 5.40). Every
incremental forward of ours goes through these two functions, so no call uses a removed name."""

from __future__ import annotations

import functools
import inspect


@functools.cache
def _takes_cache(model_class: type) -> bool:
    return "cache" in inspect.signature(model_class.forward).parameters


def with_cache(model, cache) -> dict:
    """The keyword arguments that pass `cache` (None: start one) to model.forward."""
    return {"cache" if _takes_cache(type(model)) else "past_key_values": cache}


def cache_of(model, output):
    """The cache a forward returned, read by the name this transformers version uses."""
    return output.cache if _takes_cache(type(model)) else output.past_key_values
