"""Soft prompts on disk as PEFT prompt-tuning adapters, loadable by peft and by dlmi.

The folder holds `adapter_config.json` (peft_type PROMPT_TUNING, task_type CAUSAL_LM) and
`adapter_model.safetensors` with one tensor, `prompt_embeddings` (N, d), which is how PEFT
itself saves prompt-learning adapters. PEFT puts the virtual tokens before all input, so a
prompt that dlmi optimised at the start of the sequence (no prefix, template starting with
{prompt}) gives identical logits under PEFT.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dlmi.errors import UsageError

CONFIG, WEIGHTS, KEY = "adapter_config.json", "adapter_model.safetensors", "prompt_embeddings"


def save_soft_prompt(path: str | Path, embeddings: torch.Tensor, model, base_model: str,
                     prompt_text: str | None = None) -> Path:
    """Write embeddings (N, d) as a PEFT prompt-tuning adapter folder for `model`."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--save {path} is a file: give a folder")
    N, d = embeddings.shape
    cfg = model.config
    config = {
        "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM",
        "num_virtual_tokens": N, "token_dim": d, "num_transformer_submodules": 1,
        "num_attention_heads": getattr(cfg, "num_attention_heads", None) or cfg.n_head,
        "num_layers": getattr(cfg, "num_hidden_layers", None) or cfg.n_layer,
        "base_model_name_or_path": base_model, "prompt_tuning_init": "RANDOM",
        "inference_mode": True, "revision": None,
    }
    if prompt_text is not None:  # the discrete prompt these embeddings came from, if any
        config["dlmi_prompt_text"] = prompt_text
    path.mkdir(parents=True, exist_ok=True)
    save_file({KEY: embeddings.detach().to("cpu", torch.float32).contiguous()},
              str(path / WEIGHTS))
    (path / CONFIG).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return path


def load_soft_prompt(path: str | Path) -> torch.Tensor:
    """The (N, d) prompt embeddings of a PEFT prompt-tuning adapter folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        raise UsageError(f"{path} is not a soft prompt folder: it needs {CONFIG} and {WEIGHTS}")
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
        tensors = load_file(str(path / WEIGHTS))
    except (json.JSONDecodeError, SafetensorError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the soft prompt in {path}: {exc}") from None
    if config.get("peft_type") != "PROMPT_TUNING" or KEY not in tensors:
        raise UsageError(f"{path} is not a prompt-tuning adapter (peft_type PROMPT_TUNING "
                         f"with {KEY})")
    return tensors[KEY]
