"""dlmi: find prompts that make a frozen language model say a chosen output.

    import dlmi
    lm = dlmi.load_model("smollm2-135m")          # or "tiny-random", an HF id, a .gguf path
    result = dlmi.invert(lm, "The capital of France is Paris.", prompt_length=10, steps=256)
    print(result)                                  # prompt, greedy output, LCS ratio
    results = dlmi.invert_batch(lm, ["first target", "second target"], dlmi.DLMIConfig())

Methods: `dlmi.method_names()`; pass `method="gcg"` etc. to invert/invert_batch.
"""

from __future__ import annotations

from dlmi.methods.dlmi_method import DLMIConfig
from dlmi.methods.registry import get_method, method_names
from dlmi.models import LoadedModel, load_model
from dlmi.result import InversionResult
from dlmi.runner import Progress, run_inversion

__all__ = [
    "DLMIConfig", "InversionResult", "LoadedModel", "Progress", "get_method", "invert",
    "invert_batch", "load_model", "method_names",
]


def invert(lm: LoadedModel, target, config=None, method: str = "dlmi", **options) -> InversionResult:
    """Invert one target (text or token ids). Options override config fields."""
    return run_inversion(lm, [target], method=method, config=config, **options)[0]


def invert_batch(lm: LoadedModel, targets, config=None, method: str = "dlmi",
                 **options) -> list[InversionResult]:
    """Invert several targets in one batched optimisation; one result per target, in order."""
    return run_inversion(lm, list(targets), method=method, config=config, **options)
