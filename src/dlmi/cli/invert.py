"""`dlmi invert`: invert one target, or a file of targets as one batch."""

from __future__ import annotations

import dataclasses
import logging
import sys

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

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("invert", help="find a prompt whose greedy output is the target",
                       description="Find a prompt whose greedy output is the target; several "
                                   "targets (--targets FILE) run as one batch.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--target", help="target text")
    src.add_argument("--targets", "--target-file", dest="targets_file", metavar="FILE",
                     help="targets file: one target per line, or JSONL with text/target_ids")
    add_model_flags(p)
    add_method_choice(p, "inversion")
    add_method_flags(p)
    add_soft_flags(p)
    start = p.add_mutually_exclusive_group()
    start.add_argument("--init-prompt", default=None, metavar="TEXT",
                       help="start from this prompt's tokens instead of a random prompt")
    start.add_argument("--init-from", default=None, metavar="CKPT",
                       help="warm start from a trained logit2prompt inverter (`dlmi l2p "
                            "train`): its best prompt for the target is the start")
    p.add_argument("--prefix", default=None,
                   help="fixed context placed before the learnable prompt (not optimised)")
    p.add_argument("--json", "--out", dest="json_out", default=None, metavar="FILE",
                   help="append one results row per target (JSON Lines, the rows `dlmi bench` "
                        "writes and `dlmi report` reads), each as soon as its target is done; "
                        "rows cut short by Ctrl-C are marked interrupted and left out of reports")
    add_quiet_flag(p)
    p.set_defaults(handler=run)


def _warm_start(args, lm) -> list[int]:
    from dlmi.inversion.runner import target_ids_of
    from dlmi.logit2prompt.invert import warm_start_prompt
    from dlmi.logit2prompt.model import Logit2Prompt

    inverter = Logit2Prompt.load(args.init_from, lm.device)
    ids, lcs = warm_start_prompt(inverter, lm, target_ids_of(lm, args.target))
    log.info("warm start from %s: %r (its output's LCS %.2f)", args.init_from, lm.decode(ids),
             lcs)
    return ids


def run(args) -> int:
    from dlmi.evaluation.cells import result_row
    from dlmi.evaluation.results_io import append_row
    from dlmi.evaluation.target_file import read_target_file
    from dlmi.inversion.config_builder import build_config
    from dlmi.inversion.runner import run_inversion

    if args.soft:
        args.method = "soft-prompt"
    config = build_config(args.method, overrides=method_overrides(args))  # before the model
    if args.json_out:
        check_writable(args.json_out, "--json")
    if args.save:
        if args.target is None:
            raise UsageError("--save writes one prompt: give one --target, not --targets")
        check_output_dir(args.save, "--save")
    if args.init_from:
        from dlmi.logit2prompt.model import check_checkpoint

        if args.target is None:
            raise UsageError("--init-from starts one target: give --target, not --targets")
        check_checkpoint(args.init_from)
    if args.init_prompt is not None and not args.init_prompt:
        raise UsageError("--init-prompt is empty: give some text")
    if args.target is not None:
        if not args.target:
            raise UsageError("target is empty: give --target some text")
        targets, rows = [args.target], [{}]
    else:
        specs = read_target_file(args.targets_file)
        targets, rows = [s.target for s in specs], [s.row for s in specs]
    lm = load_model_from_args(args)
    prefix = lm.encode(args.prefix) if args.prefix else None
    if args.init_prompt:
        config = dataclasses.replace(config, init_prompt=tuple(lm.encode(args.init_prompt)))
    elif args.init_from:
        config = dataclasses.replace(config, init_prompt=tuple(_warm_start(args, lm)))

    def save(index, result):  # each row as soon as its target is done (Ctrl-C: marked)
        if args.json_out:
            row = rows[index]
            append_row(args.json_out, result_row(lm, result, args.model,
                                                 row.get("id", f"t{index}"), row.get("k")))

    bar = None if args.quiet else ProgressBar(config.steps)
    try:
        results = run_inversion(lm, targets, method=args.method, config=config,
                                prefix_ids=prefix, callback=bar.update if bar else None,
                                on_result=save)
    finally:
        if bar:
            bar.close()
    for i, result in enumerate(results):
        if len(results) > 1:
            print(f"--- target {i + 1}/{len(results)}")
        print(result)
    if args.json_out:
        log.info("appended %d row(s) to %s", len(results), args.json_out)
    if args.save:
        save_prompt(args.save, lm, results[0], prompt_first=not prefix)
    if any(r.interrupted for r in results):
        print("dlmi: interrupted; the results above are the best found so far", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
