"""`dlmi tune`: one shared prompt for a data set of input/output pairs inside a template."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dlmi.cli.common import (
    EXIT_INTERRUPTED,
    ProgressBar,
    add_method_choice,
    add_method_flags,
    add_model_flags,
    add_quiet_flag,
    add_soft_flags,
    check_output_dir,
    check_writable,
    load_model_from_args,
    method_overrides,
    save_prompt,
)
from dlmi.errors import UsageError

DEFAULT_TEMPLATE = "{prompt} {input}"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "tune", help="tune one prompt so that a template gives each input its output",
        description="Tune one shared prompt over JSONL pairs {\"input\", \"output\"}: the "
                    "template's {prompt} is learned, {input} is filled from each pair, and the "
                    "output must be the greedy continuation. Reports exact-match accuracy and "
                    "mean LCS before (empty {prompt}) and after.")
    p.add_argument("--data", required=True, metavar="FILE",
                   help='training pairs, JSONL: {"input": ..., "output": ...} per line '
                        "(input optional)")
    p.add_argument("--eval", dest="eval_file", default=None, metavar="FILE",
                   help="held-out pairs to report on (default: the training pairs)")
    p.add_argument("--template", default=DEFAULT_TEMPLATE,
                   help="text around the prompt with one {prompt} and optionally {input} "
                        f"(default {DEFAULT_TEMPLATE!r}); a JSON list of chat messages "
                        '[{"role": ..., "content": ...}]; or @FILE holding either')
    p.add_argument("--chat", action="store_true",
                   help="render a text template as the user message of the model's chat "
                        "template; the output is then the assistant's reply")
    p.add_argument("--pairs-per-step", type=int, default=None, metavar="P",
                   help="a mini-batch of P training pairs per step (default: all pairs); "
                        "results are always judged on all of them")
    add_model_flags(p)
    add_method_choice(p, "tuning")
    add_method_flags(p)
    add_soft_flags(p)
    p.add_argument("--json", "--out", dest="json_out", default=None, metavar="FILE",
                   help="write the result as one JSON object (accuracy_before/after, "
                        "lcs_before/after, prompt_ids, prompt_text, per-pair outputs)")
    add_quiet_flag(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from dlmi.inversion.config_builder import build_config
    from dlmi.prompting.dataset import read_pairs
    from dlmi.prompting.template import parse_template
    from dlmi.prompting.tune import tune_prompt

    if args.soft:
        args.method = "soft-prompt"
    config = build_config(args.method, overrides=method_overrides(args))  # before the model
    if args.pairs_per_step is not None and args.pairs_per_step < 1:
        raise UsageError(f"--pairs-per-step must be >= 1, got {args.pairs_per_step}")
    template = parse_template(args.template, chat=args.chat)
    train = read_pairs(args.data, "--data")
    held_out = read_pairs(args.eval_file, "--eval") if args.eval_file else None
    if args.json_out:
        check_writable(args.json_out, "--json")
    if args.save:
        check_output_dir(args.save, "--save")
    lm = load_model_from_args(args)
    bar = None if args.quiet else ProgressBar(config.steps)
    try:
        result = tune_prompt(lm, train, template, held_out, method=args.method, config=config,
                             callback=bar.update if bar else None,
                             pairs_per_step=args.pairs_per_step)
    finally:
        if bar:
            bar.close()
    print(result)
    if args.json_out:
        _write_json(Path(args.json_out), result.to_json(indent=1))
    if args.save:
        before, _ = template.ids(lm, train[0].input)
        save_prompt(args.save, lm, result.inversion, prompt_first=not before)
    if result.interrupted:
        print("dlmi: interrupted; the prompt above is the best found so far", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _write_json(path: Path, text: str) -> None:
    """Whole or not at all: a temporary file renamed over the target."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(path)
