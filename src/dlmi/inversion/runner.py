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
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from dlmi.errors import UsageError
from dlmi.inversion.config_builder import build_config
from dlmi.inversion.provenance import provenance
from dlmi.inversion.result import InversionResult
from dlmi.methods.base import Batch, MethodConfig, distinct_per_row, row_generators
from dlmi.methods.registry import get_method, method_for
from dlmi.metrics import lcs_ratio
from dlmi.model.compute import ComputeCounter
from dlmi.model.context import SpanContext
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.models import LoadedModel, as_loaded_model, frozen
from dlmi.model.numerics import subnormals_flushed
from dlmi.model.perplexity import perplexity
from dlmi.model.roundtrip import retokenised
from dlmi.model.vocab import allowed_token_ids

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
    flops: float = 0.0  # estimated FLOPs of the run so far, all targets (ComputeCounter)


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
    method: str | None = None,
    config: MethodConfig | None = None,
    seeds: Sequence[int] | None = None,
    prefix_ids: Sequence[int] | None = None,
    callback: Callable[[Progress], None] | None = None,
    on_result: Callable[[int, InversionResult], None] | None = None,
    context: SpanContext | None = None,
    pairs_per_step: int | None = None,
    **overrides,
) -> list[InversionResult]:
    """Invert B targets as one batch; returns one InversionResult per target, in order.

    method: a registered name; None takes the method whose config class `config` is, or the
    default method (dlmi-search) when no config is given.

    seeds: one per target (default: config.seed for all); the same (target, seed) gives the same
    result alone or inside a batch.
    callback: called after every step with a Progress.
    on_result: called with (target index, result) as soon as a target is done, so callers can
    save it before the rest of the batch finishes.
    context: fixed tokens around the prompt (dlmi.model.context), instead of prefix_ids; with
    K pairs each target is the K outputs end to end (dlmi.prompting.tune builds them).
    pairs_per_step: with K pairs, each step sees this many of them (a fresh seeded order each
    epoch); evaluation always judges all K. None: all pairs every step.
    lm: a LoadedModel, or a (model, tokenizer) pair loaded with transformers; the model is
    frozen during the run and left as it was after it.
    """
    method = method or method_for(config)
    cfg = build_config(method, config, overrides)
    if not targets:
        raise UsageError("no targets given")
    lm = as_loaded_model(lm)
    ids = [target_ids_of(lm, t) for t in targets]
    if context is None:
        context = SpanContext.single(prefix_ids or [])
    elif prefix_ids:
        raise UsageError("give the prefix inside the context (template), not both")
    longest = max(map(len, ids)) // context.pairs
    need = context.longest() + cfg.prompt_length + longest
    if need > lm.max_length:
        raise UsageError(f"fixed context + prompt + target is {need} tokens but the model's "
                         f"context is {lm.max_length}: shorten the target or lower "
                         "--prompt-length")
    seeds = [cfg.seed] * len(ids) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != len(ids):
        raise UsageError(f"got {len(seeds)} seeds for {len(ids)} targets")
    # With several targets, no_target_tokens bans every target's tokens for every row.
    vocab = allowed_token_ids(lm, cfg.vocab, cfg.vocab_allow, cfg.vocab_deny,
                              banned={t for row in ids for t in row} if cfg.no_target_tokens
                              else ())
    with subnormals_flushed(), frozen(lm.model):
        dlm = DifferentiableLM(lm, context=context, prompt_vocab=vocab)
        dlm.fluency = cfg.fluency
        run = _Run(lm, get_method(method)(cfg, dlm), ids, seeds, callback, on_result)
        if pairs_per_step is not None:
            if pairs_per_step < 1:
                raise UsageError(f"pairs per step must be >= 1, got {pairs_per_step}")
            if pairs_per_step < context.pairs:
                run.pairs_per_step = pairs_per_step
        return run.run()



@dataclass
class _Row:
    """What the runner tracks for one target."""

    ids: list[int]
    seed: int
    best_lcs: float | None = None  # None until the first evaluation
    best_prompt: list[int] = dataclasses.field(default_factory=list)
    best_output: list[int] = dataclasses.field(default_factory=list)
    repaired: bool = False  # best_prompt is the re-tokenised text of what the method found
    embed_lcs: float | None = None  # soft prompts: best LCS of the embeddings' own output
    embed_output: list[int] = dataclasses.field(default_factory=list)
    embeddings: torch.Tensor | None = None  # (N, d) the soft prompt behind embed_lcs
    embed_solved_at: int | None = None
    solved_at: int | None = None
    steps_done: int = 0
    seconds: float = 0.0
    history: list[dict] = dataclasses.field(default_factory=list)
    lcs_at: dict[str, float] = dataclasses.field(default_factory=dict)
    compute: ComputeCounter = dataclasses.field(default_factory=ComputeCounter)
    loss: float = float("nan")
    tau: float | None = None
    soft_lcs: float | None = None  # of the latest step's training forward (the paper's metric)
    best_soft_lcs: float | None = None
    soft_lcs_at: dict[str, float] = dataclasses.field(default_factory=dict)

    def record_budget(self, budget: int, overwrite: bool = True) -> None:
        """Note the best hard (and soft, if any) LCS so far as the value at `budget` steps."""
        for table, value in ((self.lcs_at, self.best_lcs), (self.soft_lcs_at, self.best_soft_lcs)):
            if value is not None and (overwrite or str(budget) not in table):
                table[str(budget)] = value


class _Run:
    def __init__(self, lm, method, ids, seeds, callback, on_result):
        self.lm, self.method, self.dlm, self.cfg = lm, method, method.dlm, method.config
        self.callback, self.on_result = callback, on_result
        self.rows = [_Row(list(i), s) for i, s in zip(ids, seeds, strict=True)]
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
        self.pairs_per_step: int | None = None  # mini-batches of a context's pairs

    def run(self) -> list[InversionResult]:
        cfg = self.cfg
        self.t0 = time.perf_counter()
        stopped = None  # "interrupted" (Ctrl-C) or "time" (time limit reached)
        state = self.method.init_state(self.batch)
        candidates = None
        try:
            for step in range(1, cfg.steps + 1):
                before = dataclasses.replace(self.dlm.compute)
                out = (self._pair_step(state, step) if self.pairs_per_step
                       else self.method.step(state, self.batch, step))
                candidates = out.candidates
                self._record_step(out, step)
                proven = out.solved is not None and bool(out.solved.any())
                if (step % cfg.eval_every == 0 or step == cfg.steps or step in cfg.budgets
                        or proven):
                    self._evaluate(state, candidates, step)
                self._charge(before)
                if step in cfg.budgets:
                    for b in self.active:
                        self.rows[b].record_budget(step)
                state = self._drop_solved(state)
                if self.callback:
                    self.callback(self._progress(step))
                if not self.active:
                    break
                if cfg.time_limit is not None and self._elapsed() >= cfg.time_limit:
                    stopped = "time"
                    log.info("time limit of %.0f s reached after %d steps", cfg.time_limit, step)
                    break
        except KeyboardInterrupt:
            stopped = "interrupted"
            log.warning("interrupted: reporting the best prompts found so far")
        if any(self.rows[b].best_lcs is None for b in self.active):
            # Stopped before the first evaluation: judge the current prompts once.
            self._evaluate(state, None, max(r.steps_done for r in self.rows))
        for b in self.active:
            self._finish(b, stopped)
        return [self.results[b] for b in range(len(self.rows))]

    def _pair_step(self, state, step: int):
        """One step on a mini-batch of the context's pairs, then the full context back.
        The step's soft LCS and exactness proof cover only its pairs, so they are dropped."""
        full = self.dlm.context
        K, k = full.pairs, self.pairs_per_step
        epoch, i = divmod(step - 1, math.ceil(K / k))
        order = torch.randperm(K, generator=torch.Generator().manual_seed(
            self.rows[0].seed + epoch)).tolist()
        picked = sorted(order[i * k:(i + 1) * k])
        B, KM = self.batch.target_ids.shape
        cols = torch.tensor(picked, device=self.dlm.device)

        def part(t):  # (B, K * M) -> (B, k * M)
            return t.view(B, K, KM // K)[:, cols].reshape(B, -1)

        batch = Batch(part(self.batch.target_ids), part(self.batch.mask), self.batch.generators)
        self.dlm.use_context(full.subset(picked))
        try:
            out = self.method.step(state, batch, step)
        finally:
            self.dlm.use_context(full)
        return dataclasses.replace(out, train_argmax=None, solved=None)

    def _elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def _record_step(self, out, step: int) -> None:
        for j, b in enumerate(self.active):
            r = self.rows[b]
            r.steps_done = step
            r.loss = float(out.loss[j])
            if out.temperature is not None:
                r.tau = float(out.temperature[j])
            if out.train_argmax is not None:
                n = len(r.ids)
                r.soft_lcs = lcs_ratio(out.train_argmax[j, :n].tolist(), r.ids)
                r.best_soft_lcs = max(r.best_soft_lcs or 0.0, r.soft_lcs)

    def _finish(self, b: int, stopped: str | None = None) -> None:
        r = self.rows[b]
        r.seconds = self._elapsed()
        # Budgets not reached: a solved target keeps its best (anytime: it cannot drop); one
        # stopped early (Ctrl-C, time limit) did not reach them and records nothing there.
        if r.solved_at is not None or stopped is None:
            for budget in self.cfg.budgets:
                r.record_budget(budget, overwrite=False)
        interrupted = stopped == "interrupted" and r.solved_at is None
        self.results[b] = self._result(b, interrupted)
        if self.on_result:
            self.on_result(b, self.results[b])

    def _charge(self, before: ComputeCounter) -> None:
        """Share the compute of the last step and evaluation equally among the active rows
        (they all did the same work)."""
        now, n = self.dlm.compute, len(self.active)
        for b in self.active:
            c = self.rows[b].compute
            c.forward_passes += (now.forward_passes - before.forward_passes) // n
            c.backward_passes += (now.backward_passes - before.backward_passes) // n
            c.tokens += (now.tokens - before.tokens) // n
            c.flops += (now.flops - before.flops) / n

    @torch.no_grad()
    def _evaluate(self, state, candidates, step: int) -> None:
        target, mask = self.batch.target_ids, self.batch.mask
        current = self.method.current_prompts(state)  # (b, N)
        cands = current[:, None] if candidates is None else torch.cat(
            [current[:, None], candidates], dim=1)  # (b, K, N)
        b, K = cands.shape[:2]
        # One teacher-forced pass over the distinct prompts: hits (b, K, M).
        rows = torch.arange(b, device=cands.device)
        of_row, distinct, back = distinct_per_row(cands)  # (D,), (D, N), (b, K)
        hits = self.dlm.teacher_forced_hits(distinct, target[of_row])[back]  # (b, K, M)
        score = (hits | ~mask[:, None]).sum(-1)  # (b, K); ties keep index 0, the current one
        safe = self.dlm.round_trips(cands) if self.cfg.roundtrip else None  # (b, K) bool
        # Among equal hits, a prompt that survives as text wins.
        pick = (score * 2 + (safe.long() if safe is not None else 0)).argmax(1)
        chosen = cands[rows, pick]  # (b, N)
        # Every scored position hit under teacher forcing: greedy decoding gives the target
        # (see DifferentiableLM.teacher_forced_hits), so only the other rows are decoded.
        proven = score[rows, pick] == target.shape[1]  # (b,)
        repaired: dict[int, list[int]] = {}  # row -> the ids its text really tokenises to
        if safe is not None:
            ctx = self.dlm.context
            for j in (~safe[rows, pick]).nonzero()[:, 0].tolist():
                repaired[j] = retokenised(self.lm, ctx.before[0],
                                          self.dlm.global_ids(chosen[j]).tolist(),
                                          ctx.after[0])
                proven[j] = False
        eos = self.dlm.eos_id
        output = target.clone() if eos is None else torch.where(mask, target, eos)  # (b, M)
        plain = ~proven
        for j in repaired:
            plain[j] = False
        if bool(plain.any()):
            output[plain] = self.dlm.greedy_decode(chosen[plain], target.shape[1])
        for j, ids in repaired.items():  # judged as the text a user would paste
            prompt = torch.tensor([ids], dtype=torch.long, device=chosen.device)
            output[j] = self.dlm.greedy_decode(prompt, target.shape[1], model_ids=True)[0]
        if K > 1 and self.cfg.judge_all:
            self._decode_others(cands, pick, back, safe, proven, chosen, output,
                                repaired)
        embeds = self.method.current_embeddings(state)  # (b, N, d) for soft prompts
        if embeds is not None:
            embed_output = self.dlm.greedy_decode(None, target.shape[1], prompt_embeds=embeds)
        for j, b in enumerate(self.active):
            r = self.rows[b]
            out_ids = output[j, : len(r.ids)].tolist()
            lcs = lcs_ratio(out_ids, r.ids)
            if r.best_lcs is None or lcs > r.best_lcs:
                r.best_lcs = lcs
                r.best_prompt = (repaired[j] if j in repaired
                                 else self.dlm.global_ids(chosen[j]).tolist())
                r.repaired = j in repaired
                r.best_output = out_ids
            if out_ids == r.ids and r.solved_at is None:
                r.solved_at = step
            if embeds is not None:
                self._judge_embeddings(r, embeds[j], embed_output[j, : len(r.ids)].tolist(),
                                       step)
            r.history.append({
                "step": step, "loss": r.loss, "temperature": r.tau, "lcs": lcs,
                "best_lcs": r.best_lcs, "soft_lcs": r.soft_lcs, "best_soft_lcs": r.best_soft_lcs,
                "seconds": round(self._elapsed(), 3),
            })

    def _decode_others(self, cands, pick, ids, safe, proven, chosen, output, repaired) -> None:
        """Decode every other distinct candidate that survives as text and keep, per row, the
        one whose output has the longest common subsequence with the target (in place:
        chosen (b, N), output (b, M), repaired). On a target out of reach the most
        teacher-forced hits need not give the best greedy output; a decode costs about as
        much as one teacher-forced pass and is charged to the method like the rest.
        cands (b, K, N); pick (b,); ids (b, K) the distinct-prompt index of each candidate."""
        b, K, _ = cands.shape
        todo, seen = [], set()
        for j in range(b):
            if proven[j]:
                continue
            seen.add(int(ids[j, pick[j]]))
            for k in range(K):
                if int(ids[j, k]) not in seen and (safe is None or bool(safe[j, k])):
                    seen.add(int(ids[j, k]))
                    todo.append((j, k))
        if not todo:
            return
        js = torch.tensor([j for j, _ in todo], device=cands.device)
        ks = torch.tensor([k for _, k in todo], device=cands.device)
        decoded = self.dlm.greedy_decode(cands[js, ks], output.shape[1])  # (T, M)
        best = {}  # row -> its best LCS so far at this evaluation
        for (j, k), out in zip(todo, decoded, strict=True):
            ref = self.rows[self.active[j]].ids
            if j not in best:
                best[j] = lcs_ratio(output[j, :len(ref)].tolist(), ref)
            lcs = lcs_ratio(out[:len(ref)].tolist(), ref)
            if lcs > best[j]:
                best[j] = lcs
                chosen[j], output[j] = cands[j, k], out
                repaired.pop(j, None)

    @staticmethod
    def _judge_embeddings(r, embeds: torch.Tensor, out_ids: list[int], step: int) -> None:
        """A soft prompt's own greedy output (B rows judged one by one): best kept."""
        lcs = lcs_ratio(out_ids, r.ids)
        if r.embed_lcs is None or lcs > r.embed_lcs:
            r.embed_lcs, r.embed_output = lcs, out_ids
            r.embeddings = embeds.detach().to("cpu").clone()
        if out_ids == r.ids and r.embed_solved_at is None:
            r.embed_solved_at = step

    def _drop_solved(self, state):
        if not self.cfg.early_stop:
            return state
        # A row is done when its hard prompt is exact, or, for a soft prompt, its embeddings.
        keep = [j for j, b in enumerate(self.active)
                if self.rows[b].solved_at is None and self.rows[b].embed_solved_at is None]
        if len(keep) == len(self.active):
            return state
        for j, b in enumerate(self.active):
            if j not in keep:
                self._finish(b)
        self.active = [self.active[j] for j in keep]
        if not keep:
            return state
        index = torch.tensor(keep, device=self.dlm.device)
        self.batch = self.batch.select(index)
        return self.method.keep(state, index)

    def _progress(self, step: int) -> Progress:
        rows = [self.rows[b] for b in self.active] or self.rows  # all done: where they ended
        taus = [r.tau for r in rows if r.tau is not None]
        best = [r.best_lcs or 0.0 for r in self.rows]
        return Progress(step=step, steps=self.cfg.steps, active=len(self.active),
                        total=len(self.rows), loss=sum(r.loss for r in rows) / len(rows),
                        temperature=sum(taus) / len(taus) if taus else None,
                        best_lcs=sum(best) / len(best),
                        flops=sum(r.compute.flops for r in self.rows))

    def _result(self, b: int, interrupted: bool) -> InversionResult:
        lm, r = self.lm, self.rows[b]
        prompt_text = lm.decode(r.best_prompt)
        before = list(self.dlm.context.before[0])
        ppl = perplexity(lm, r.best_prompt, context=before or None) if r.best_prompt else None
        return InversionResult(
            method=self.method.name, model=lm.spec, prompt_ids=r.best_prompt,
            prompt_text=prompt_text, output_ids=r.best_output,
            output_text=lm.decode(r.best_output), target_ids=r.ids,
            target_text=lm.decode(r.ids), lcs_ratio=r.best_lcs or 0.0,
            exact_match=r.best_output == r.ids,
            roundtrip_ok=lm.encode(prompt_text) == r.best_prompt, prompt_repaired=r.repaired,
            steps=r.steps_done, seconds=round(r.seconds, 3), seed=r.seed,
            prefix_ids=self.dlm.prefix_ids.tolist(), solved_at_step=r.solved_at,
            interrupted=interrupted, lcs_at_budget=r.lcs_at, soft_lcs=r.best_soft_lcs,
            soft_lcs_at_budget=r.soft_lcs_at, history=r.history,
            compute=r.compute.as_dict(), config=self.cfg.to_dict(),
            prompt_perplexity=ppl, embedding_lcs=r.embed_lcs,
            embedding_exact=None if r.embed_lcs is None else r.embed_output == r.ids,
            embedding_output_text=None if r.embed_lcs is None else lm.decode(r.embed_output),
            embedding_solved_at_step=r.embed_solved_at, embeddings=r.embeddings,
            provenance=provenance(self.dlm.device),
        )
