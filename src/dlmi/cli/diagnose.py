"""`dlmi diagnose`: gradient variance and bias of the estimators (the paper's Figure 5)."""

from __future__ import annotations

from pathlib import Path

from dlmi.cli.common import (
    add_model_flags,
    add_quiet_flag,
    check_output_dir,
    int_list,
    load_model_from_args,
)
from dlmi.errors import UsageError


def add_parser(sub) -> None:
    d = sub.add_parser("diagnose", help="gradient variance and bias of the estimators (Fig. 5)")
    add_model_flags(d)
    d.add_argument("--target", required=True, help="target text")
    d.add_argument("--estimators", default="gs:1,gs:100,learnable:1,decoupled:100,reinforce",
                   help="comma-separated: gs:TAU, learnable:TAU0, decoupled:TAU0, reinforce")
    d.add_argument("--steps", type=int, default=8, help="optimisation steps measured")
    d.add_argument("--repeats", type=int, default=8, help="gradient estimates per step")
    d.add_argument("--reference-samples", type=int, default=256,
                   help="REINFORCE samples of the unbiased reference gradient")
    d.add_argument("--prompt-length", type=int, default=10, help="prompt length N in tokens")
    d.add_argument("--samples", type=int, default=8, help="samples per estimate")
    d.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1")
    d.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_quiet_flag(d)
    d.set_defaults(handler=run)


def run(args) -> int:
    from dlmi.evaluation.diagnostics import diagnose, parse_estimators, plot_diagnostics
    from dlmi.evaluation.results_io import append_row
    from dlmi.inversion.runner import target_ids_of
    from dlmi.model.numerics import subnormals_flushed

    estimators = parse_estimators(args.estimators)
    seeds = int_list(args.seeds, "--seeds")
    if not args.target:
        raise UsageError("target is empty: give --target some text")
    for flag in ("steps", "repeats", "reference_samples", "prompt_length", "samples"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1, "
                             f"got {getattr(args, flag)}")
    check_output_dir(args.out, "--out")
    lm = load_model_from_args(args)
    ids = target_ids_of(lm, args.target)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "gradient_diagnostics.jsonl"
    rows_path.unlink(missing_ok=True)

    def on_row(row):
        append_row(rows_path, row)
        if not args.quiet:
            print(f"{row['estimator']:>16} seed {row['seed']} step {row['step']:>3}: "
                  f"max var {row['max_variance']:.3g}, max bias {row['max_bias']:.3g} "
                  f"(noise floor {row['bias_noise_floor']:.3g})", flush=True)

    with subnormals_flushed():  # as an inversion run: low-temperature estimators make them
        rows = diagnose(lm, ids, estimators, steps=args.steps, repeats=args.repeats,
                        reference_samples=args.reference_samples,
                        prompt_length=args.prompt_length, samples=args.samples,
                        seeds=tuple(seeds), on_row=on_row)
    for path in plot_diagnostics(rows, out):
        print(path)
    print(rows_path)
    return 0
