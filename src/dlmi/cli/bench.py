"""`dlmi bench`: a grid of methods x targets x seeds x prompt lengths, resumable rows."""

from __future__ import annotations

import logging
import sys

from dlmi.cli.common import ProgressBar, add_model_flags, add_quiet_flag, check_writable, int_list
from dlmi.errors import UsageError

log = logging.getLogger(__name__)


def add_parser(sub) -> None:
    from dlmi.evaluation.bench import PRESETS

    b = sub.add_parser("bench", help="run a grid of methods x targets x seeds x prompt lengths",
                       description="Run every missing row of a benchmark grid into a JSONL "
                                   "file (rerun the same command to resume). Flags override "
                                   "the preset or config file.")
    b.add_argument("--preset", default=None, choices=PRESETS,
                   help="a shipped grid (without preset or config: the paper's grid)")
    b.add_argument("--config", default=None, metavar="FILE", help="YAML or TOML bench config")
    b.add_argument("--out", required=True, metavar="FILE",
                   help="results JSONL (appended; reruns resume)")
    add_model_flags(b, default=None)  # None: the preset's or config file's model
    b.add_argument("--methods", default=None, help="comma-separated method names")
    b.add_argument("--prompt-lengths", default=None, help="comma-separated, e.g. 10,80")
    b.add_argument("--budgets", default=None,
                   help="step budgets recorded in one run, e.g. 256,2048")
    b.add_argument("--seeds", default=None, help="comma-separated, e.g. 0,1,2,3,4")
    b.add_argument("--targets", dest="targets_file", default=None, metavar="FILE",
                   help="targets file (JSONL or one per line) instead of generated targets")
    b.add_argument("--batch-size", type=int, default=None, help="rows optimised together")
    b.add_argument("--eval-every", type=int, default=None,
                   help="judge prompts by greedy decoding every K steps")
    b.add_argument("--time-limit", type=float, default=None,
                   help="wall seconds per row (a batch of b rows gets b times this)")
    b.add_argument("--prefix", default=None, metavar="TEXT",
                   help='fixed text before every prompt, e.g. "<|im_start|>" (the BoS of '
                        "the default model); default none, as in the paper's protocol")
    b.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the grid's cells on a Ray cluster: HOST:PORT, ray://HOST:PORT or "
                        "auto; without ADDRESS $RAY_ADDRESS, else a local cluster on this "
                        "machine (needs pip install 'dlmi[ray]')")
    b.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a method option, e.g. --set gcg.search_width=64")
    add_quiet_flag(b)
    b.set_defaults(handler=run)


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


def run(args) -> int:
    from dlmi.evaluation.bench import check_spec, load_spec, run_bench, total_rows
    from dlmi.evaluation.results_io import read_rows
    from dlmi.model.models import load_model

    overrides = dict(
        model=args.model,
        methods=args.methods.split(",") if args.methods else None,
        prompt_lengths=int_list(args.prompt_lengths, "--prompt-lengths"),
        budgets=int_list(args.budgets, "--budgets"), seeds=int_list(args.seeds, "--seeds"),
        targets_file=args.targets_file, batch_size=args.batch_size, eval_every=args.eval_every,
        time_limit=args.time_limit, prefix=args.prefix,
        device=args.device, dtype=args.dtype,
    )
    spec = load_spec(args.preset, args.config, **overrides)
    extra = bench_method_options(args.set)
    for method, opts in extra.items():
        spec.method_options.setdefault(method, {}).update(opts)
    if args.ray is not None:
        from dlmi.evaluation.bench import RayOptions

        ray = spec.executor.ray or RayOptions()
        ray.address = args.ray or ray.address
        spec.executor.ray = ray
    check_spec(spec)  # every method's options, before the model loads
    check_writable(args.out, "--out")
    lm = None
    if spec.executor.ray is None:  # on Ray each worker loads its own
        log.info("loading model %s", spec.model)
        lm = load_model(spec.model, device=spec.device, dtype=spec.dtype)
    before = len(read_rows(args.out))
    n_targets = spec.targets.per_k * len(spec.targets.k)
    if spec.targets_file:
        from dlmi.evaluation.target_file import read_target_file

        n_targets = len(read_target_file(spec.targets_file))
    total = total_rows(spec, n_targets)
    overall = step_bar = None
    if not args.quiet:
        from tqdm import tqdm

        overall = tqdm(total=total, initial=min(before, total), desc="rows", file=sys.stderr,
                       position=0, dynamic_ncols=True)
        if lm is not None:  # steps are seen in this process only
            step_bar = ProgressBar(spec.steps, desc="steps", position=1)

    def on_row(row):
        if overall:
            overall.update(1)

    def on_step(progress):
        if step_bar:
            step_bar.update(progress)

    def on_cell(cell):
        log.info("%s, N=%d: %d row(s)", cell.method, cell.prompt_length, len(cell.rows))

    try:
        written = run_bench(spec, args.out, lm=lm, on_row=on_row, on_step=on_step,
                            on_cell=on_cell)
    finally:
        for bar in (step_bar, overall):
            if bar:
                bar.close()
    print(f"wrote {written} row(s) to {args.out} ({len(read_rows(args.out))} in the file)")
    return 0


