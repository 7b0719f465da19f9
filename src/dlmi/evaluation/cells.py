"""Cells of the benchmark grid: one method at one prompt length, and a chunk of (target, seed)
rows optimised together in one batch. A cell is what an executor runs, in this process or on a
Ray worker; it turns into result rows one by one, as each target finishes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dlmi.errors import UsageError


@dataclass
class Cell:
    method: str
    model: str
    prompt_length: int
    config: Any  # the method's config dataclass, built and checked on the driver
    rows: list[tuple[dict, int]]  # (target row, seed); target rows carry target_perplexity
    time_limit: float | None = None  # wall seconds for the whole batch, None: steps alone
    prefix: str | None = None  # fixed text before every prompt (BenchSpec.prefix)

    def keys(self) -> list[tuple]:
        """row_key of each row the cell writes, in order."""
        return [(self.method, self.model, str(t["id"]), s, self.prompt_length)
                for t, s in self.rows]

    def without(self, done: set[tuple]) -> Cell:
        """The same cell less the rows already written (a retry after a lost worker)."""
        rows = [r for r, key in zip(self.rows, self.keys(), strict=True) if key not in done]
        return dataclasses.replace(self, rows=rows)


def method_config(spec, method: str, prompt_length: int):
    from dlmi.inversion.config_builder import build_config

    # The paper's protocol judges the ids themselves, not their text (method_options may
    # turn the round trip on).
    options = {"roundtrip": False, **spec.method_options.get(method, {})}
    options.update(prompt_length=prompt_length, steps=spec.steps,
                   budgets=tuple(spec.budgets), eval_every=spec.eval_every)
    return build_config(method, overrides=options, where=f"bench option of {method}",
                        hint=lambda name: f"--set {method}.{name}=VALUE (or method_options)")


def prefix_ids(lm, prefix: str | None) -> list[int]:
    """The ids of a bench prefix (special tokens such as "<|im_start|>" included)."""
    if prefix is None:
        return []
    ids = lm.encode(prefix)
    if not ids:
        raise UsageError(f"prefix {prefix!r} encodes to no tokens: give non-empty text")
    return ids


def run_cell(lm, cell: Cell, emit: Callable[[dict], None],
             on_step: Callable | None = None, provenance: dict | None = None) -> None:
    """Invert the cell's targets as one batch; emit(row) as each target is done.

    provenance: extra keys for each row's provenance (the executor, the worker).
    Ctrl-C stops the batch: finished rows were emitted, the others are not results, and
    KeyboardInterrupt is raised again so the grid stops.
    """
    from dlmi.inversion.runner import run_inversion

    def save(index, result):
        if result.interrupted:
            return  # an unfinished row is not a result; a rerun redoes it
        target, _ = cell.rows[index]
        row = result_row(lm, result, cell.model, target["id"], target.get("k"),
                         target.get("target_perplexity"))
        row["provenance"].update(provenance or {})
        emit(row)

    results = run_inversion(lm, [t["target_ids"] for t, _ in cell.rows], method=cell.method,
                            config=dataclasses.replace(cell.config, time_limit=cell.time_limit),
                            seeds=[s for _, s in cell.rows], callback=on_step, on_result=save,
                            prefix_ids=prefix_ids(lm, cell.prefix) or None)
    if any(r.interrupted for r in results):
        raise KeyboardInterrupt


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
