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
    method_options: dict[str, dict] = field(default_factory=dict)  # per method config fields
    device: str | None = None
    dtype: str | None = None

    def __post_init__(self):
        if isinstance(self.targets, dict):
            self.targets = _build(TargetGrid, self.targets, "targets")
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


def load_targets(spec: BenchSpec, lm) -> list[dict]:
    """Rows with at least id, k, target_ids, text."""
    from dlmi.evaluation.target_file import read_target_file
    from dlmi.evaluation.targets import generate_targets

    if spec.targets_file:
        rows = []
        for i, t in enumerate(read_target_file(spec.targets_file)):
            ids = t.target if isinstance(t.target, list) else lm.encode(t.target)
            rows.append({"id": t.row.get("id", f"t{i}"), "k": t.row.get("k"),
                         "target_ids": ids, "text": lm.decode(ids)})
        return rows
    g = spec.targets
    return generate_targets(lm, g.k, g.per_k, g.length, g.sigma, g.seed)


@dataclass
class Job:
    """One (method, prompt length) slice of the grid and the rows still to run."""

    method: str
    prompt_length: int
    pending: list[tuple[dict, int]]  # (target row, seed)


def plan(spec: BenchSpec, targets: list[dict], done: set[tuple]) -> list[Job]:
    jobs = []
    for method in spec.methods:
        for n in spec.prompt_lengths:
            pending = [(t, s) for t in targets for s in spec.seeds
                       if (method, spec.model, str(t["id"]), s, n) not in done]
            jobs.append(Job(method, n, pending))
    return jobs


def method_config(spec: BenchSpec, method: str, prompt_length: int):
    from dlmi.inversion.config_builder import build_config

    # The paper's protocol judges the ids themselves, not their text (method_options may
    # turn the round trip on).
    options = {"roundtrip": False, **spec.method_options.get(method, {})}
    options.update(prompt_length=prompt_length, steps=spec.steps,
                   budgets=tuple(spec.budgets), eval_every=spec.eval_every)
    return build_config(method, overrides=options, where=f"bench option of {method}",
                        hint=lambda name: f"--set {method}.{name}=VALUE (or method_options)")


def check_spec(spec: BenchSpec) -> None:
    """Fail on unknown methods, bad method options or a missing targets file before any work."""
    for method in spec.methods:
        for n in spec.prompt_lengths:
            method_config(spec, method, n)
    if spec.targets_file:
        from dlmi.evaluation.target_file import read_target_file

        read_target_file(spec.targets_file)


def run_bench(spec: BenchSpec, out: str | Path, lm=None,
              on_row: Callable[[dict], None] | None = None,
              on_step: Callable | None = None, on_job: Callable | None = None) -> int:
    """Run every missing row of the grid into `out`; returns the number of rows written."""
    from dlmi.inversion.runner import run_inversion
    from dlmi.model.models import load_model
    from dlmi.model.perplexity import perplexity

    check_spec(spec)
    for method in spec.method_options:
        if method not in spec.methods:
            log.warning("method_options for %s ignored: it is not in methods", method)
    lm = lm or load_model(spec.model, device=spec.device, dtype=spec.dtype)
    out = Path(out)
    done = {row_key(r) for r in read_rows(out, repair=True) if "target_id" in r}
    targets = load_targets(spec, lm)
    target_ppl = {str(t["id"]): perplexity(lm, t["target_ids"]) for t in targets}
    jobs = plan(spec, targets, done)
    written = 0
    for job in jobs:
        config = method_config(spec, job.method, job.prompt_length)
        if on_job:
            on_job(job)
        for start in range(0, len(job.pending), spec.batch_size):
            chunk = job.pending[start:start + spec.batch_size]

            def save(index, result, chunk=chunk, job=job):
                nonlocal written
                if result.interrupted:
                    return  # an unfinished row is not a result; a rerun redoes it
                target, seed = chunk[index]
                row = result_row(lm, result, spec.model, target["id"], target.get("k"),
                                 target_ppl[str(target["id"])])
                append_row(out, row)
                written += 1
                if on_row:
                    on_row(row)

            limit = spec.time_limit * len(chunk) if spec.time_limit is not None else None
            results = run_inversion(lm, [t["target_ids"] for t, _ in chunk], method=job.method,
                                    config=dataclasses.replace(config, time_limit=limit),
                                    seeds=[s for _, s in chunk],
                                    callback=on_step, on_result=save)
            if any(r.interrupted for r in results):
                raise KeyboardInterrupt  # Ctrl-C: rows done so far are saved; stop the grid
    return written


def result_row(lm, result, model: str, target_id, k: int | None,
               target_perplexity: float | None = None) -> dict:
    """One results row (the schema `dlmi report` reads): the grid's keys, the cheating check
    and perplexities, then every field of the InversionResult."""
    from dlmi.metrics import overlap_rate
    from dlmi.model.perplexity import perplexity

    eos = [lm.eos_token_id] if lm.eos_token_id is not None else []
    if target_perplexity is None:
        target_perplexity = perplexity(lm, result.target_ids)
    return {
        "method": result.method, "model": model, "target_id": str(target_id), "k": k,
        "seed": result.seed, "prompt_length": len(result.prompt_ids),
        "overlap_rate": overlap_rate(result.prompt_ids, result.target_ids, eos),
        "prompt_perplexity": perplexity(lm, result.prompt_ids),
        "target_perplexity": target_perplexity,
        **result.to_dict(),
    }


def total_rows(spec: BenchSpec, n_targets: int) -> int:
    return len(spec.methods) * len(spec.prompt_lengths) * len(spec.seeds) * n_targets
