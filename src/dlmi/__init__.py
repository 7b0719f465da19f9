"""dlmi: find prompts that make a frozen language model say a chosen output.

    import dlmi
    lm = dlmi.load_model("smollm2-135m")          # or "tiny-random", an HF id, a .gguf path
    result = dlmi.invert(lm, "The capital of France is Paris.", prompt_length=10, steps=256)
    print(result)                                  # prompt, greedy output, LCS ratio
    results = dlmi.invert_batch(lm, ["first target", "second target"], dlmi.DLMIConfig())
    tuned = dlmi.tune(lm, [dlmi.Pair("2+2", " 4"), dlmi.Pair("3+5", " 8")], "{prompt} {input} =")

`lm` may also be a (model, tokenizer) pair loaded with transformers: frozen during the run,
left as it was after it.

Methods: `dlmi.method_names()`; pass `method="gcg"` etc. to invert/invert_batch, or a config
of that method (`dlmi.DLMIConfig()` runs the paper's DLMI). The default is dlmi-search.
"""

from __future__ import annotations

import importlib

# Re-exports resolve lazily so that `dlmi report` and other torch-free paths stay torch-free.
_EXPORTS = {
    "DLMIConfig": "dlmi.methods.dlmi_method",
    "DLMISearchConfig": "dlmi.methods.dlmi_search",
    "get_method": "dlmi.methods.registry",
    "method_names": "dlmi.methods.registry",
    "LoadedModel": "dlmi.model.models",
    "load_model": "dlmi.model.models",
    "InversionResult": "dlmi.inversion.result",
    "Progress": "dlmi.inversion.runner",
    "run_inversion": "dlmi.inversion.runner",
    "Pair": "dlmi.prompting.dataset",
    "Template": "dlmi.prompting.template",
    "TuneResult": "dlmi.prompting.tune",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dlmi' has no attribute {name!r}")


__all__ = [
    "DLMIConfig", "DLMISearchConfig", "InversionResult", "LoadedModel", "Progress",
    "Pair", "Template", "TuneResult",
    "get_method", "invert", "invert_batch", "load_model", "method_names", "tune",
]


def invert(lm, target, config=None, method: str | None = None, **options):
    """Invert one target (text or token ids) -> InversionResult. Options override config.

    method: None picks the method of `config`'s class, else dlmi-search (the default)."""
    from dlmi.inversion.runner import run_inversion

    return run_inversion(lm, [target], method=method, config=config, **options)[0]


def invert_batch(lm, targets, config=None, method: str | None = None, **options):
    """Invert several targets in one batched optimisation; one result per target, in order."""
    from dlmi.inversion.runner import run_inversion

    return run_inversion(lm, list(targets), method=method, config=config, **options)


def tune(lm, pairs, template="{prompt} {input}", eval_pairs=None, config=None,
         method: str | None = None, **options):
    """Tune one prompt over (input, output) pairs (dlmi.Pair or dicts) inside a template (text
    with {prompt} and {input}, a list of chat messages, or a dlmi.Template) -> TuneResult."""
    from dlmi.model.models import as_loaded_model
    from dlmi.prompting.dataset import as_pairs
    from dlmi.prompting.template import as_template
    from dlmi.prompting.tune import tune_prompt

    return tune_prompt(as_loaded_model(lm), as_pairs(pairs), as_template(template),
                       as_pairs(eval_pairs) if eval_pairs else None, method=method,
                       config=config, **options)
