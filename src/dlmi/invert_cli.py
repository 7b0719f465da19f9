"""`dlmi invert`: invert one target, or a file of targets as one batch."""

from __future__ import annotations

import logging
import sys

from dlmi.cli import (
    EXIT_INTERRUPTED,
    ProgressBar,
    add_method_flags,
    add_model_flags,
    load_model_from_args,
    method_overrides,
    write_json_atomic,
)
from dlmi.errors import UsageError
from dlmi.methods.registry import DEFAULT_METHOD
from dlmi.options import coerce_overrides

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    p = sub.add_parser("invert", help="find a prompt whose greedy output is the target")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--target", help="target text")
    src.add_argument("--target-file", help="one target per line, or JSONL with text/target_ids")
    add_model_flags(p)
    p.add_argument("--method", default=DEFAULT_METHOD,
                   help="inversion method (see `dlmi methods`); default dlmi-search")
    add_method_flags(p)
    p.add_argument("--prefix", default=None,
                   help="fixed context placed before the learnable prompt (not optimised)")
    p.add_argument("--json", dest="json_out", default=None, help="write the results here (list)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no info logs")
    p.set_defaults(handler=cmd_invert)


def cmd_invert(args) -> int:
    from dlmi.methods.registry import get_method
    from dlmi.runner import run_inversion
    from dlmi.target_file import read_target_file

    method_cls = get_method(args.method)  # fail on a bad name before loading a model
    overrides = coerce_overrides(method_cls.config_class, method_overrides(args))
    config = method_cls.config_class(**overrides)
    if args.target is not None:
        if not args.target:
            raise UsageError("target is empty: give --target some text")
        targets = [args.target]
    else:
        targets = [spec.target for spec in read_target_file(args.target_file)]
    lm = load_model_from_args(args)
    prefix = lm.encode(args.prefix) if args.prefix else None
    bar = None if args.quiet else ProgressBar(config.steps)
    try:
        results = run_inversion(lm, targets, method=args.method, config=config,
                                prefix_ids=prefix, callback=bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    for i, result in enumerate(results):
        if len(results) > 1:
            print(f"--- target {i + 1}/{len(results)}")
        print(result)
    if args.json_out:
        write_json_atomic(args.json_out, [r.to_dict() for r in results])
        log.info("wrote %d result(s) to %s", len(results), args.json_out)
    if any(r.interrupted for r in results):
        print("dlmi: interrupted; the results above are the best found so far", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
