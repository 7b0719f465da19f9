"""Command line: `dlmi invert | methods | targets | bench | report | diagnose`.

Only this module prints or configures logging. Bad input ends with one line on stderr and
exit code 2; Ctrl-C keeps what was computed and exits 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dlmi.errors import UsageError
from dlmi.options import COMMON_FLAGS, parse_value

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130



def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    _quiet_libraries()
    if args.command != "report":  # reports stay torch-free
        _flush_denormals()
    try:
        return args.handler(args)
    except UsageError as exc:
        print(f"dlmi: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("dlmi: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    from dlmi import bench_cli, invert_cli

    parser = argparse.ArgumentParser(
        prog="dlmi", description="Find prompts that make a frozen language model say a target.")
    sub = parser.add_subparsers(dest="command")
    invert_cli.add_parser(sub)
    methods = sub.add_parser("methods", help="list the registered inversion methods")
    methods.set_defaults(handler=cmd_methods)
    bench_cli.add_parsers(sub)
    return parser


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="smollm2-135m (default), tiny-random, tiny-random-gpt2, a .gguf path, "
                        "a model directory or a Hugging Face id")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float32 (default), bfloat16 or float16")


def add_method_flags(p: argparse.ArgumentParser) -> None:
    for name, (kind, text) in COMMON_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=text)
    p.add_argument("--no-teacher-forcing", action="store_true",
                   help="free-running differentiable rollout instead of teacher forcing")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of the method's config, e.g. --set temperature=fixed")


def method_overrides(args) -> dict:
    """The config fields given on the command line (flags and --set KEY=VALUE)."""
    out = {name: getattr(args, name) for name in COMMON_FLAGS if getattr(args, name) is not None}
    if args.no_teacher_forcing:
        out["teacher_forcing"] = False
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def load_model_from_args(args):
    from dlmi.models import load_model

    logging.getLogger(__name__).info("loading model %s", args.model)
    return load_model(args.model, device=args.device, dtype=args.dtype)


def write_json_atomic(path: str | Path, payload) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n")
    tmp.replace(path)


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


def cmd_methods(args) -> int:
    from dlmi.methods.registry import get_method, method_names

    width = max(map(len, method_names()))
    for name in method_names():
        print(f"{name:<{width}}  {get_method(name).description}")
    return 0


def _flush_denormals() -> None:
    """Treat subnormal floats as zero, for the CLI process only (a global setting the library
    leaves alone). Tempered softmaxes at low temperature produce them, and CPU arithmetic on
    subnormals is many times slower: measured 2x on a GBDA step of the tiny model."""
    import torch

    torch.set_flush_denormal(True)


def _quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", module="transformers")
    for name in ("transformers", "accelerate", "gguf"):
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
