"""`dlmi targets`: difficulty-driven targets (the paper's Algorithm 2) into a JSONL file."""

from __future__ import annotations

import logging
from pathlib import Path

from dlmi.cli.common import (
    add_model_flags,
    add_quiet_flag,
    check_writable,
    int_list,
    load_model_from_args,
)
from dlmi.errors import UsageError

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    t = sub.add_parser("targets", help="generate difficulty-driven targets (Algorithm 2)")
    add_model_flags(t)
    t.add_argument("--k", default="1,6,11,16,21", help="difficulties (ranks), comma-separated")
    t.add_argument("--per-k", type=int, default=5, help="targets per difficulty")
    t.add_argument("--length", type=int, default=20, help="target length M in tokens")
    t.add_argument("--sigma", type=float, default=1.0, help="std of the sampled rank")
    t.add_argument("--seed", type=int, default=42, help="random seed of the sampling")
    t.add_argument("--start-text", default=None,
                   help="start from this text instead of the BoS token (models without one)")
    t.add_argument("--out", required=True, help="targets JSONL file to write")
    add_quiet_flag(t)
    t.set_defaults(handler=run)


def run(args) -> int:
    from dlmi.evaluation.results_io import append_row
    from dlmi.evaluation.targets import generate_targets

    ks = int_list(args.k, "--k")
    if any(k < 1 for k in ks):
        raise UsageError(f"--k takes ranks >= 1, got {args.k!r}")
    if args.per_k < 1:
        raise UsageError(f"--per-k must be >= 1, got {args.per_k}")
    if args.length < 1:
        raise UsageError(f"--length must be >= 1 token, got {args.length}")
    if not args.sigma >= 0 or args.sigma == float("inf"):
        raise UsageError(f"--sigma must be a finite number >= 0, got {args.sigma}")
    check_writable(args.out, "--out")
    lm = load_model_from_args(args)
    start = lm.encode(args.start_text) if args.start_text else None
    rows = generate_targets(lm, ks, args.per_k, args.length, args.sigma, args.seed, start)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    for row in rows:
        append_row(tmp, row)
    tmp.replace(out)
    for row in rows:
        print(f"{row['id']:>8}  mean rank {row['mean_rank']:5.1f}  {row['text']!r}")
    log.info("wrote %d targets to %s", len(rows), out)
    return 0


