"""The benchmark grid: methods x targets x seeds x prompt lengths, resumable JSONL rows.

Targets and seeds of one (method, prompt length) run through the batched inverter in chunks of
`batch_size`; each row is appended (flushed, fsynced) the moment its target is done, so a killed
run loses at most the rows in flight, and rerunning the same command skips rows already there.
The method is anytime: one run of max(budgets) steps records the best LCS at every budget.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from dlmi.errors import UsageError
from dlmi.evaluation.cells import Cell, method_config, prefix_ids, run_cell
from dlmi.evaluation.results_io import append_row, read_rows, row_key

log = logging.getLogger(__name__)

PRESETS = ("paper", "cpu-quick")


@dataclass
class TargetGrid:
    """Algorithm 2 settings (Section 4.1: 25 targets, k in {1, 6, 11, 16, 21}, M = 20)."""

    k: list[int] = field(default_factory=lambda: [1, 6, 11, 16, 21])
    per_k: int = 5
    length: int = 20
    sigma: float = 1.0
    seed: int = 42

    def __post_init__(self):
        if not self.k or min(self.k) < 1 or self.per_k < 1 or self.length < 1 or self.sigma < 0:
            raise UsageError(f"targets: k must be ranks >= 1, per_k and length >= 1, sigma >= 0; "
                             f"got {self}")


@dataclass
class RayOptions:
    """Where and how the grid's cells run on Ray (`executor: {ray: {...}}`, `--ray`)."""

    # None: $RAY_ADDRESS when set, else a new local cluster on this machine; "auto": the
    # cluster this machine belongs to; "HOST:PORT" or "ray://HOST:PORT": that cluster.
    address: str | None = None
    gpus_per_task: float = 0.0  # per worker (one worker per GPU at 1)
    cpus_per_task: float = 1.0  # per worker: also its torch threads
    workers: int | None = None  # None: as many as the cluster's resources hold
    max_retries: int = 3  # times a cell is resubmitted after its worker died
    # Seconds to wait for a cluster at an explicit address to answer (checked in a child
    # process first: ray.init blocks for good where something other than Ray listens).
    connect_timeout: float = 60.0

    def __post_init__(self):
        if self.gpus_per_task < 0 or self.cpus_per_task <= 0:
            raise UsageError("executor.ray: gpus_per_task must be >= 0 and cpus_per_task > 0, "
                             f"got {self.gpus_per_task} and {self.cpus_per_task}")
        if (self.workers is not None and self.workers < 1) or self.max_retries < 0:
            raise UsageError("executor.ray: workers must be >= 1 and max_retries >= 0, "
                             f"got {self.workers} and {self.max_retries}")
        if not self.connect_timeout > 0:
            raise UsageError("executor.ray: connect_timeout must be > 0 seconds, "
                             f"got {self.connect_timeout}")


@dataclass
class ExecutorSpec:
    ray: RayOptions | None = None  # None: the cells run one after another in this process


@dataclass
class BenchSpec:
    model: str = "smollm2-135m"
    methods: list[str] = field(default_factory=lambda: ["dlmi"])
    prompt_lengths: list[int] = field(default_factory=lambda: [10, 80])  # Figures 3 and 2
    budgets: list[int] = field(default_factory=lambda: [256, 2048])  # left/right panels
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # "5 seeds" (Sec. 4.3)
    targets: TargetGrid = field(default_factory=TargetGrid)
    targets_file: str | None = None  # JSONL of targets instead of generating them
    eval_every: int = 8
    batch_size: int = 8  # rows optimised together; bounds memory (B x samples x N x V floats)
    # Wall seconds per row: a batch of b rows stops after b * time_limit (rows share its steps),
    # so methods can be compared at equal time. None: steps alone bound the run.
    time_limit: float | None = None
    # Fixed text before every prompt, e.g. "<|im_start|>" (the default model's BoS, which
    # Algorithm 2's targets start from). Rows record its ids as prefix_ids; one rows file
    # holds one prefix. None: the prompt opens the sequence, as in the paper's protocol.
    prefix: str | None = None
    method_options: dict[str, dict] = field(default_factory=dict)  # per method config fields
    device: str | None = None
    dtype: str | None = None
    executor: ExecutorSpec = field(default_factory=ExecutorSpec)

    def __post_init__(self):
        if isinstance(self.targets, dict):
            self.targets = _build(TargetGrid, self.targets, "targets")
        if isinstance(self.executor, dict):
            self.executor = _build(ExecutorSpec, self.executor, "executor")
        for name in ("methods", "prompt_lengths", "budgets", "seeds"):
            if not getattr(self, name):
                raise UsageError(f"bench needs at least one value in {name}")
        for name in ("prompt_lengths", "budgets", "batch_size", "eval_every"):
            values = getattr(self, name)
            for v in values if isinstance(values, list) else [values]:
                if v < 1:
                    raise UsageError(f"{name} must be >= 1, got {v}: change {_bench_hint(name)}")
        for method, opts in self.method_options.items():
            if not isinstance(opts, dict):
                raise UsageError(f"method_options.{method} must be a mapping of options, "
                                 f"got {opts!r}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise UsageError(f"time_limit must be > 0 seconds, got {self.time_limit}: "
                             f"change {_bench_hint('time_limit')}")

    @property
    def steps(self) -> int:
        return max(self.budgets)


def load_spec(preset: str | None = None, config_file: str | None = None,
              **overrides) -> BenchSpec:
    """A preset or a YAML/TOML file, then command-line overrides (None values ignored)."""
    data: dict = {}
    if preset:
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
        data = yaml.safe_load(resources.files("dlmi.presets").joinpath(f"{preset}.yaml")
                              .read_text())
    if config_file:
        data.update(_read_config(Path(config_file)))
    data.update({k: v for k, v in overrides.items() if v is not None})
    return _build(BenchSpec, data, "bench config")


def _read_config(path: Path) -> dict:
    from dlmi.files import read_text

    text = read_text(path, "bench config")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"cannot parse {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping of bench options")
    return data


def _build(cls, data: dict, what: str):
    """The dataclass from config-file values, each type-checked like a flag."""
    from dlmi.inversion.config_builder import coerce

    return cls(**coerce(cls, data, what, hint=_bench_hint))


def _bench_hint(name: str) -> str:
    return f"{name} in the config file (or --{name.replace('_', '-')})"


def load_targets(spec: BenchSpec, lm, file_targets: list | None = None) -> list[dict]:
    """Rows with at least id, k, target_ids, text. file_targets: the targets file already
    read (a Ray worker may not see the driver's files)."""
    from dlmi.evaluation.target_file import read_target_file
    from dlmi.evaluation.targets import generate_targets

    if spec.targets_file:
        rows = []
        if file_targets is None:
            file_targets = read_target_file(spec.targets_file)
        for i, t in enumerate(file_targets):
            ids = t.target if isinstance(t.target, list) else lm.encode(t.target)
            rows.append({"id": t.row.get("id", f"t{i}"), "k": t.row.get("k"),
                         "target_ids": ids, "text": lm.decode(ids)})
        return rows
    g = spec.targets
    return generate_targets(lm, g.k, g.per_k, g.length, g.sigma, g.seed)


def targets_with_perplexity(lm, spec: BenchSpec, file_targets: list | None = None
                            ) -> list[dict]:
    """load_targets, each row with its target_perplexity (the report's difficulty column)."""
    from dlmi.model.perplexity import perplexity

    return [{**t, "target_perplexity": perplexity(lm, t["target_ids"])}
            for t in load_targets(spec, lm, file_targets)]


def plan(spec: BenchSpec, targets: list[dict], done: set[tuple]) -> list[Cell]:
    """The cells still to run: per method and prompt length, the missing (target, seed) rows
    in chunks of batch_size (the same chunks whatever executor runs them)."""
    cells = []
    for method in spec.methods:
        for n in spec.prompt_lengths:
            grid = Cell(method, spec.model, n, method_config(spec, method, n),
                        [(t, s) for t in targets for s in spec.seeds], prefix=spec.prefix)
            pending = grid.without(done).rows
            for start in range(0, len(pending), spec.batch_size):
                chunk = pending[start:start + spec.batch_size]
                limit = spec.time_limit * len(chunk) if spec.time_limit is not None else None
                cells.append(dataclasses.replace(grid, rows=chunk, time_limit=limit))
    return cells


def check_spec(spec: BenchSpec) -> None:
    """Fail on unknown methods, bad method options or a missing targets file before any work."""
    for method in spec.methods:
        for n in spec.prompt_lengths:
            method_config(spec, method, n)
    if spec.targets_file:
        from dlmi.evaluation.target_file import read_target_file

        read_target_file(spec.targets_file)


def check_prefix(out: str | Path, ids: list[int]) -> None:
    """Resuming rows made after another prefix would mix two protocols in one file."""
    for row in read_rows(Path(out)):
        if "target_id" in row and list(row.get("prefix_ids") or []) != ids:
            raise UsageError(f"{out} holds rows made with prefix ids {row.get('prefix_ids')}, "
                             f"this grid uses {ids}: write to another --out")


class RowWriter:
    """The single writer of a results file: appends each new row durably, drops a row whose
    key is already there (a retried cell re-sending it), counts what it wrote."""

    def __init__(self, out: str | Path, on_row: Callable[[dict], None] | None = None):
        self.out = Path(out)
        self.done = {row_key(r) for r in read_rows(self.out, repair=True) if "target_id" in r}
        self.on_row = on_row
        self.written = 0

    def __call__(self, row: dict) -> None:
        key = row_key(row)
        if key in self.done:
            return
        append_row(self.out, row)
        self.done.add(key)
        self.written += 1
        if self.on_row:
            self.on_row(row)


def run_bench(spec: BenchSpec, out: str | Path, lm=None,
              on_row: Callable[[dict], None] | None = None,
              on_step: Callable | None = None, on_cell: Callable | None = None) -> int:
    """Run every missing row of the grid into `out`; returns the number of rows written.

    With spec.executor.ray the cells run on a Ray cluster (dlmi.evaluation.ray_executor) and
    `lm` and `on_step` are not used: each worker loads its own model.
    """
    from dlmi.model.models import load_model

    check_spec(spec)
    for method in spec.method_options:
        if method not in spec.methods:
            log.warning("method_options for %s ignored: it is not in methods", method)
    writer = RowWriter(out, on_row)
    if spec.executor.ray is not None:
        from dlmi.evaluation.ray_executor import RayGrid
        from dlmi.evaluation.target_file import read_target_file

        file_targets = read_target_file(spec.targets_file) if spec.targets_file else None
        with RayGrid(spec.executor.ray, spec.model, spec.device, spec.dtype) as grid:
            check_prefix(out, grid.call(prefix_ids, spec.prefix))
            targets = grid.call(targets_with_perplexity, spec, file_targets)
            grid.run(plan(spec, targets, writer.done), writer, writer.done, on_cell)
        return writer.written
    lm = lm or load_model(spec.model, device=spec.device, dtype=spec.dtype)
    check_prefix(out, prefix_ids(lm, spec.prefix))
    for cell in plan(spec, targets_with_perplexity(lm, spec), writer.done):
        if on_cell:
            on_cell(cell)
        run_cell(lm, cell, writer, on_step, {"executor": "local"})
    return writer.written


def total_rows(spec: BenchSpec, n_targets: int) -> int:
    return len(spec.methods) * len(spec.prompt_lengths) * len(spec.seeds) * n_targets
