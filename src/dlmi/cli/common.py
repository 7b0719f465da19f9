"""What the commands share: exit codes, model and method flags, progress bars, output files.

Only the CLI prints or configures logging; bad input raises UsageError, which `main` turns
into one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dlmi.errors import UsageError
from dlmi.options import COMMON_FLAGS, parse_value

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

MODEL_HELP = ("smollm2-135m (default), tiny-random, tiny-random-gpt2, a .gguf path, "
              "a model directory or a Hugging Face id")


def add_model_flags(p: argparse.ArgumentParser, default: str | None = "smollm2-135m") -> None:
    """--model, --device, --dtype; default None leaves the model to a config file (bench)."""
    p.add_argument("--model", default=default, help=MODEL_HELP)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="weights' dtype (default float32)")


def add_quiet_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars, no info logs")


def add_method_choice(p: argparse.ArgumentParser, what: str) -> None:
    """--method NAME, the registry's methods, default dlmi-search."""
    from dlmi.methods.registry import DEFAULT_METHOD, method_names

    names = method_names()
    p.add_argument("--method", default=DEFAULT_METHOD, choices=names, metavar="METHOD",
                   help=f"{what} method, one of {', '.join(names)} (default {DEFAULT_METHOD}; "
                        "`dlmi methods NAME`)")


def add_method_flags(p: argparse.ArgumentParser) -> None:
    for name, (kind, text) in COMMON_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=text)
    p.add_argument("--no-teacher-forcing", action="store_true",
                   help="free-running differentiable rollout instead of teacher forcing")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of the method (`dlmi methods NAME` lists them), "
                        "e.g. --set temperature=fixed")


def method_overrides(args) -> dict:
    """The config fields given on the command line (flags and --set KEY=VALUE)."""
    out = {name: getattr(args, name) for name in COMMON_FLAGS if getattr(args, name) is not None}
    if args.no_teacher_forcing:
        out["teacher_forcing"] = False
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def int_list(text: str | None, flag: str) -> list[int] | None:
    """'1,6,11' -> [1, 6, 11]; None stays None (flag not given)."""
    if text is None:
        return None
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise UsageError(f"{flag} is empty: give at least one integer")
    return values


def load_model_from_args(args):
    from dlmi.model.models import load_model

    logging.getLogger(__name__).info("loading model %s", args.model)
    return load_model(args.model, device=args.device, dtype=args.dtype)


def check_writable(path: str | Path, flag: str) -> Path:
    """Fail before any work when an output file cannot be written (a directory, or a parent
    that is a file or not writable)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory: give a file path")
    _check_creatable(path.parent, path, flag)
    return path


def add_soft_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--soft", action="store_true",
                   help="learn N continuous embeddings (method soft-prompt) instead of tokens; "
                        "for users who can feed embeddings to the model")
    p.add_argument("--save", default=None, metavar="DIR",
                   help="write the prompt as a PEFT prompt-tuning adapter (the soft prompt, or "
                        "the embeddings of the discrete one), loadable with "
                        "peft.PeftModel.from_pretrained and by --set init_from=DIR")


def save_prompt(folder: str, lm, result, prompt_first: bool) -> None:
    """--save: the result's soft prompt, or its tokens' embeddings, as a PEFT adapter."""
    import torch

    from dlmi.model.peft_adapter import save_soft_prompt

    if result.embeddings is not None:
        embeddings, text = result.embeddings, None
    else:
        ids = torch.tensor(result.prompt_ids, dtype=torch.long)
        embeddings = lm.model.get_input_embeddings().weight[ids].detach()
        text = result.prompt_text
    save_soft_prompt(folder, embeddings, lm.model, lm.spec, text)
    print(f"saved the prompt as a PEFT prompt-tuning adapter in {folder}")
    if not prompt_first:
        print("note: PEFT puts virtual tokens before all input, but this prompt was optimised "
              "after fixed text, so under PEFT it will not give these outputs", file=sys.stderr)


def check_output_dir(path: str | Path, flag: str) -> Path:
    """An output directory: fine if it exists as a directory or can be created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file: give a directory")
    _check_creatable(path, path, flag)
    return path


def _check_creatable(folder: Path, path: Path, flag: str) -> None:
    """`folder` exists as a writable directory, or its nearest existing ancestor is one."""
    import os

    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UsageError(f"{flag} {path}: cannot write under {folder}; choose another path")


class ProgressBar:
    """A tqdm bar over optimisation steps showing loss, mean temperature and best LCS."""

    def __init__(self, steps: int, desc: str = "steps", position: int = 0):
        self.steps, self.desc, self.position = steps, desc, position
        self.bar = None  # created on the first update, so input errors print no empty bar

    def update(self, progress) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.steps, desc=self.desc, file=sys.stderr,
                            dynamic_ncols=True, position=self.position, leave=self.position == 0)
        fields = {"loss": f"{progress.loss:.3f}", "best_lcs": f"{progress.best_lcs:.2f}"}
        if progress.temperature is not None:
            fields["tau"] = f"{progress.temperature:.2f}"
        if progress.total > 1:
            fields["active"] = f"{progress.active}/{progress.total}"
        self.bar.set_postfix(fields, refresh=False)
        self.bar.update(progress.step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", module="transformers")
    for name in ("transformers", "accelerate", "gguf"):
        logging.getLogger(name).setLevel(logging.ERROR)
