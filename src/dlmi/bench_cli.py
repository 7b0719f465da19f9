"""`dlmi targets | bench | report | diagnose`: the paper's evaluation protocol."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from dlmi.cli import ProgressBar, add_model_flags, load_model_from_args
from dlmi.errors import UsageError

log = logging.getLogger(__name__)


def add_parsers(sub) -> None:
    t = sub.add_parser("targets", help="generate difficulty-driven targets (Algorithm 2)")
    add_model_flags(t)
    t.add_argument("--k", default="1,6,11,16,21", help="difficulties (ranks), comma-separated")
    t.add_argument("--per-k", type=int, default=5, help="targets per difficulty")
    t.add_argument("--length", type=int, default=20, help="target length M in tokens")
    t.add_argument("--sigma", type=float, default=1.0, help="std of the sampled rank")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--start-text", default=None,
                   help="start from this text instead of the BoS token (models without one)")
    t.add_argument("--out", required=True, help="JSONL file to write")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(handler=cmd_targets)

    b = sub.add_parser("bench", help="run a grid of methods x targets x seeds x prompt lengths")
    b.add_argument("--preset", default=None,
                   help="paper or cpu-quick (without preset or config: the paper's grid)")
    b.add_argument("--config", default=None, help="YAML or TOML bench config")
    b.add_argument("--out", required=True, help="results JSONL (appended; reruns resume)")
    b.add_argument("--model", default=None)
    b.add_argument("--methods", default=None, help="comma-separated method names")
    b.add_argument("--prompt-lengths", default=None, help="e.g. 10,80")
    b.add_argument("--budgets", default=None,
                   help="step budgets recorded in one run, e.g. 256,2048")
    b.add_argument("--seeds", default=None, help="e.g. 0,1,2,3,4")
    b.add_argument("--targets", dest="targets_file", default=None, help="targets JSONL file")
    b.add_argument("--batch-size", type=int, default=None)
    b.add_argument("--eval-every", type=int, default=None)
    b.add_argument("--time-limit", type=float, default=None,
                   help="wall seconds per row (a batch of b rows gets b times this)")
    b.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a method option, e.g. --set gcg.search_width=64")
    b.add_argument("--device", default=None)
    b.add_argument("--dtype", default=None)
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(handler=cmd_bench)

    r = sub.add_parser("report", help="tables and plots from result files (no model needed)")
    r.add_argument("results", nargs="+", help="results JSONL files")
    r.add_argument("--out", required=True, help="output directory")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(handler=cmd_report)

    d = sub.add_parser("diagnose", help="gradient variance and bias of the estimators (Fig. 5)")
    add_model_flags(d)
    d.add_argument("--target", required=True, help="target text")
    d.add_argument("--estimators", default="gs:1,gs:100,learnable:1,decoupled:100,reinforce",
                   help="comma-separated: gs:TAU, learnable:TAU0, decoupled:TAU0, reinforce")
    d.add_argument("--steps", type=int, default=8, help="optimisation steps measured")
    d.add_argument("--repeats", type=int, default=8, help="gradient estimates per step")
    d.add_argument("--reference-samples", type=int, default=256,
                   help="REINFORCE samples of the unbiased reference gradient")
    d.add_argument("--prompt-length", type=int, default=10)
    d.add_argument("--samples", type=int, default=8, help="samples per estimate")
    d.add_argument("--seeds", default="0")
    d.add_argument("--out", required=True, help="output directory")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(handler=cmd_diagnose)


def int_list(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not values:
        raise UsageError(f"{flag} is empty")
    return values


def cmd_targets(args) -> int:
    from dlmi.results_io import append_row
    from dlmi.targets import generate_targets

    ks = int_list(args.k, "--k")
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


def bench_method_options(items: list[str]) -> dict[str, dict]:
    from dlmi.options import parse_value

    options: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot or not method or not name:
            raise UsageError(f"--set takes METHOD.KEY=VALUE, got {item!r}")
        options.setdefault(method, {})[name.replace("-", "_")] = parse_value(value)
    return options


def cmd_bench(args) -> int:
    from dlmi.bench import load_spec, run_bench, total_rows
    from dlmi.models import load_model
    from dlmi.results_io import read_rows

    overrides = dict(
        model=args.model,
        methods=args.methods.split(",") if args.methods else None,
        prompt_lengths=int_list(args.prompt_lengths, "--prompt-lengths"),
        budgets=int_list(args.budgets, "--budgets"), seeds=int_list(args.seeds, "--seeds"),
        targets_file=args.targets_file, batch_size=args.batch_size, eval_every=args.eval_every,
        time_limit=args.time_limit,
        device=args.device, dtype=args.dtype,
    )
    spec = load_spec(args.preset, args.config, **overrides)
    extra = bench_method_options(args.set)
    for method, opts in extra.items():
        spec.method_options.setdefault(method, {}).update(opts)
    log.info("loading model %s", spec.model)
    lm = load_model(spec.model, device=spec.device, dtype=spec.dtype)
    before = len(read_rows(args.out))
    n_targets = spec.targets.per_k * len(spec.targets.k)
    if spec.targets_file:
        from dlmi.target_file import read_target_file

        n_targets = len(read_target_file(spec.targets_file))
    total = total_rows(spec, n_targets)
    overall = step_bar = None
    if not args.quiet:
        from tqdm import tqdm

        overall = tqdm(total=total, initial=min(before, total), desc="rows", file=sys.stderr,
                       position=0, dynamic_ncols=True)
        step_bar = ProgressBar(spec.steps, desc="steps", position=1)

    def on_row(row):
        if overall:
            overall.update(1)

    def on_step(progress):
        if step_bar:
            step_bar.update(progress)

    def on_job(job):
        log.info("%s, N=%d: %d row(s) to run", job.method, job.prompt_length, len(job.pending))

    try:
        written = run_bench(spec, args.out, lm=lm, on_row=on_row, on_step=on_step, on_job=on_job)
    finally:
        for bar in (step_bar, overall):
            if bar:
                bar.close()
    print(f"wrote {written} row(s) to {args.out} ({len(read_rows(args.out))} in the file)")
    return 0


def cmd_report(args) -> int:
    from dlmi.report import write_report

    paths = [Path(p) for p in args.results]
    for p in paths:
        if not p.is_file():
            raise UsageError(f"results file not found: {p}")
    files = write_report(paths, Path(args.out))
    for f in files:
        print(f)
    return 0


def cmd_diagnose(args) -> int:
    from dlmi.diagnostics import diagnose, parse_estimators, plot_diagnostics
    from dlmi.results_io import append_row
    from dlmi.runner import target_ids_of

    estimators = parse_estimators(args.estimators)
    seeds = int_list(args.seeds, "--seeds")
    if not args.target:
        raise UsageError("target is empty: give --target some text")
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

    rows = diagnose(lm, ids, estimators, steps=args.steps, repeats=args.repeats,
                    reference_samples=args.reference_samples, prompt_length=args.prompt_length,
                    samples=args.samples, seeds=tuple(seeds), on_row=on_row)
    for path in plot_diagnostics(rows, out):
        print(path)
    print(rows_path)
    return 0
