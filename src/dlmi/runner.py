"""The anytime driver shared by every method: step, evaluate, keep the best, stop, report.

At every evaluation point the method's current hard prompt (and the step's hard samples, when
the method offers them) are checked in one teacher-forced pass; the most promising one is
greedy-decoded, the only judge of success, and scored by LCS ratio. The best prompt so far is
kept per target; a target leaves the batch on exact match. Ctrl-C ends the run early and still
returns the best results so far (marked interrupted).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dlmi.compute import ComputeCounter
from dlmi.dlm import DifferentiableLM
from dlmi.errors import UsageError
from dlmi.methods.base import Batch, MethodConfig, row_generators
from dlmi.methods.registry import get_method
from dlmi.metrics import lcs_ratio
from dlmi.models import LoadedModel
from dlmi.provenance import provenance
from dlmi.result import InversionResult

log = logging.getLogger(__name__)

Target = str | Sequence[int]


@dataclass
class Progress:
    """What a progress bar shows after each step."""

    step: int
    steps: int
    active: int  # targets still being optimised
    total: int
    loss: float  # mean over active targets
    temperature: float | None  # mean effective temperature over active targets
    best_lcs: float  # mean best LCS over all targets


def make_config(method: str, config: MethodConfig | None = None, **overrides) -> MethodConfig:
    """The method's config: `config` if given (updated by overrides), else defaults + overrides."""
    cls = get_method(method).config_class
    if config is None:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise UsageError(f"method {method!r} has no option(s) {', '.join(sorted(unknown))}")
        return cls(**overrides)
    if not isinstance(config, cls):
        raise UsageError(f"method {method!r} takes a {cls.__name__}, got {type(config).__name__}")
    return dataclasses.replace(config, **overrides) if overrides else config


def target_ids_of(lm: LoadedModel, target: Target) -> list[int]:
    ids = lm.encode(target) if isinstance(target, str) else [int(t) for t in target]
    if not ids:
        raise UsageError("target is empty: give at least one token of text")
    bad = [t for t in ids if not 0 <= t < lm.vocab_size]
    if bad:
        raise UsageError(f"target token id {bad[0]} is outside the vocabulary "
                         f"(0..{lm.vocab_size - 1})")
    return ids


def run_inversion(
    lm: LoadedModel,
    targets: Sequence[Target],
    method: str = "dlmi",
    config: MethodConfig | None = None,
    seeds: Sequence[int] | None = None,
    prefix_ids: Sequence[int] | None = None,
    callback: Callable[[Progress], None] | None = None,
    on_result: Callable[[int, InversionResult], None] | None = None,
    **overrides,
) -> list[InversionResult]:
    """Invert B targets as one batch; returns one InversionResult per target, in order.

    seeds: one per target (default: config.seed for all); the same (target, seed) gives the same
    result alone or inside a batch.
    callback: called after every step with a Progress.
    on_result: called with (target index, result) as soon as a target is done, so callers can
    save it before the rest of the batch finishes.
    """
    cfg = make_config(method, config, **overrides)
    if not targets:
        raise UsageError("no targets given")
    ids = [target_ids_of(lm, t) for t in targets]
    prefix = [int(t) for t in (prefix_ids or [])]
    longest = max(map(len, ids))
    need = len(prefix) + cfg.prompt_length + longest
    if need > lm.max_length:
        raise UsageError(f"prefix + prompt + target is {need} tokens but the model's context is "
                         f"{lm.max_length}: shorten the target or lower --prompt-length")
    seeds = [cfg.seed] * len(ids) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(ids):
        raise UsageError(f"got {len(seeds)} seeds for {len(ids)} targets")
    return _Run(lm, get_method(method)(cfg, DifferentiableLM(lm, prefix)), ids, seeds,
                callback, on_result).run()


class _Run:
    def __init__(self, lm, method, ids, seeds, callback, on_result):
        self.lm, self.method, self.dlm, self.cfg = lm, method, method.dlm, method.config
        self.ids, self.seeds, self.callback, self.on_result = ids, seeds, callback, on_result
        self.results: dict[int, InversionResult] = {}
        dev = self.dlm.device
        B, M = len(ids), max(map(len, ids))
        pad = lm.eos_token_id if lm.eos_token_id is not None else 0
        target = torch.full((B, M), pad, dtype=torch.long, device=dev)
        for b, row in enumerate(ids):
            target[b, : len(row)] = torch.tensor(row, device=dev)
        lengths = torch.tensor([len(r) for r in ids], device=dev)
        self.batch = Batch(target, self.dlm.target_mask(target, lengths),
                           row_generators(seeds, dev))
        self.active = list(range(B))  # original index of each row still in the batch
        self.best_lcs = [-1.0] * B
        self.best_prompt: list[list[int]] = [[] for _ in range(B)]
        self.best_output: list[list[int]] = [[] for _ in range(B)]
        self.solved_at: list[int | None] = [None] * B
        self.steps_done = [0] * B
        self.finished_s = [0.0] * B
        self.history: list[list[dict]] = [[] for _ in range(B)]
        self.lcs_at: list[dict[str, float]] = [{} for _ in range(B)]
        self.compute = [ComputeCounter() for _ in range(B)]
        self.last_loss = [float("nan")] * B
        self.last_tau: list[float | None] = [None] * B

    def run(self) -> list[InversionResult]:
        cfg = self.cfg
        self.t0 = time.perf_counter()
        interrupted = False
        state = self.method.init_state(self.batch)
        candidates = None
        try:
            for step in range(1, cfg.steps + 1):
                before = dataclasses.replace(self.dlm.compute)
                out = self.method.step(state, self.batch, step)
                candidates = out.candidates
                for j, b in enumerate(self.active):
                    self.steps_done[b] = step
                    self.last_loss[b] = float(out.loss[j])
                    if out.temperature is not None:
                        self.last_tau[b] = float(out.temperature[j])
                if step % cfg.eval_every == 0 or step == cfg.steps or step in cfg.budgets:
                    self._evaluate(state, candidates, step)
                self._charge(before)
                for budget in cfg.budgets:
                    if budget == step:
                        for b in self.active:
                            self.lcs_at[b][str(budget)] = self.best_lcs[b]
                state = self._drop_solved(state)
                if self.callback:
                    self.callback(self._progress(step))
                if not self.active:
                    break
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: reporting the best prompts found so far")
        if any(self.best_lcs[b] < 0 for b in self.active):
            # Interrupted before the first evaluation: judge the current prompts once.
            self._evaluate(state, None, max(self.steps_done))
        for b in self.active:
            self._finish(b, interrupted)
        return [self.results[b] for b in range(len(self.ids))]

    def _finish(self, b: int, interrupted: bool) -> None:
        self.finished_s[b] = time.perf_counter() - self.t0
        # Budgets not reached yet: a solved target keeps its best (anytime: it cannot drop);
        # an interrupted one did not reach them and records nothing.
        if self.solved_at[b] is not None or not interrupted:
            for budget in self.cfg.budgets:
                self.lcs_at[b].setdefault(str(budget), self.best_lcs[b])
        self.results[b] = self._result(b, interrupted and self.solved_at[b] is None)
        if self.on_result:
            self.on_result(b, self.results[b])

    def _charge(self, before: ComputeCounter) -> None:
        """Share the compute of the last step and evaluation equally among the active rows
        (they all did the same work)."""
        now, n = self.dlm.compute, len(self.active)
        for b in self.active:
            c = self.compute[b]
            c.forward_passes += (now.forward_passes - before.forward_passes) // n
            c.backward_passes += (now.backward_passes - before.backward_passes) // n
            c.tokens += (now.tokens - before.tokens) // n
            c.flops += (now.flops - before.flops) / n

    @torch.no_grad()
    def _evaluate(self, state, candidates, step: int) -> None:
        target, mask = self.batch.target_ids, self.batch.mask
        current = self.method.current_prompts(state)  # (b, N)
        chosen = current
        if candidates is not None:
            cands = torch.cat([current[:, None], candidates], dim=1)  # (b, K, N)
            b, K, N = cands.shape
            hits = self.dlm.teacher_forced_hits(cands.view(b * K, N),
                                                target.repeat_interleave(K, 0)).view(b, K, -1)
            score = (hits & mask[:, None]).sum(-1)  # (b, K); ties keep index 0, the current one
            chosen = cands[torch.arange(b, device=cands.device), score.argmax(1)]
        output = self.dlm.greedy_decode(chosen, target.shape[1])
        for j, b in enumerate(self.active):
            n = len(self.ids[b])
            out_ids = output[j, :n].tolist()
            lcs = lcs_ratio(out_ids, self.ids[b])
            if lcs > self.best_lcs[b]:
                self.best_lcs[b] = lcs
                self.best_prompt[b] = chosen[j].tolist()
                self.best_output[b] = out_ids
            if out_ids == self.ids[b] and self.solved_at[b] is None:
                self.solved_at[b] = step
            self.history[b].append({
                "step": step, "loss": self.last_loss[b], "temperature": self.last_tau[b],
                "lcs": lcs, "best_lcs": self.best_lcs[b],
                "seconds": round(time.perf_counter() - self.t0, 3),
            })

    def _drop_solved(self, state):
        if not self.cfg.early_stop:
            return state
        keep = [j for j, b in enumerate(self.active) if self.solved_at[b] is None]
        if len(keep) == len(self.active):
            return state
        for j, b in enumerate(self.active):
            if j not in keep:
                self._finish(b, interrupted=False)
        self.active = [self.active[j] for j in keep]
        if not keep:
            return state
        index = torch.tensor(keep, device=self.dlm.device)
        self.batch = self.batch.select(index)
        return self.method.keep(state, index)

    def _progress(self, step: int) -> Progress:
        rows = self.active or range(len(self.ids))  # all done: show where they ended
        losses = [self.last_loss[b] for b in rows]
        taus = [self.last_tau[b] for b in rows if self.last_tau[b] is not None]
        best = [max(x, 0.0) for x in self.best_lcs]
        return Progress(step=step, steps=self.cfg.steps, active=len(self.active),
                        total=len(self.ids), loss=sum(losses) / len(losses) if losses else 0.0,
                        temperature=sum(taus) / len(taus) if taus else None,
                        best_lcs=sum(best) / len(best))

    def _result(self, b: int, interrupted: bool) -> InversionResult:
        lm = self.lm
        prompt = self.best_prompt[b]
        prompt_text = lm.decode(prompt)
        return InversionResult(
            method=self.method.name, model=lm.spec, prompt_ids=prompt, prompt_text=prompt_text,
            output_ids=self.best_output[b], output_text=lm.decode(self.best_output[b]),
            target_ids=self.ids[b], target_text=lm.decode(self.ids[b]),
            lcs_ratio=max(self.best_lcs[b], 0.0),
            exact_match=self.best_output[b] == self.ids[b],
            roundtrip_ok=lm.encode(prompt_text) == prompt,
            steps=self.steps_done[b], seconds=round(self.finished_s[b], 3), seed=self.seeds[b],
            prefix_ids=self.dlm.prefix_ids.tolist(), solved_at_step=self.solved_at[b],
            interrupted=interrupted, lcs_at_budget=self.lcs_at[b], history=self.history[b],
            compute=self.compute[b].as_dict(), config=self.cfg.to_dict(),
            provenance=provenance(self.dlm.device),
        )
