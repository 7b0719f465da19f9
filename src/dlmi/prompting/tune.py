"""Tune one shared prompt over a data set of (input, output) pairs inside a template.

Every pair is one sequence `template(before) + prompt + template(after)` followed by its output,
and one prompt row stands for all pairs (dlmi.model.context), so any registered method tunes it
with the inversion runner unchanged: its anytime evaluation, early stop (every training pair
exact), time limit and Ctrl-C all apply. One pair with no input is exactly `dlmi invert`.

Success is judged as in inversion, by greedy decoding: a pair is exact when the greedy
continuation begins with the output's tokens. "Before" is the template with an empty span (what
the model does without a prompt); "after" is the tuned prompt in the span.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from dlmi.errors import UsageError
from dlmi.inversion.result import InversionResult, visible
from dlmi.inversion.runner import Progress, run_inversion
from dlmi.methods.base import MethodConfig
from dlmi.metrics import lcs_ratio
from dlmi.model.context import SpanContext
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.models import LoadedModel
from dlmi.prompting.dataset import Pair
from dlmi.prompting.template import Template


@dataclass
class PairOutcome:
    input: str
    expected: str
    output_before: str
    output_after: str
    exact_before: bool
    exact_after: bool
    lcs_before: float
    lcs_after: float


@dataclass
class TuneResult:
    method: str
    model: str
    template: str
    prompt_ids: list[int]
    prompt_text: str
    eval_on: str  # "eval" (held-out pairs) or "train" (no eval set given)
    accuracy_before: float  # exact-match share of greedy outputs, empty span
    accuracy_after: float  # ... with the tuned prompt
    lcs_before: float  # mean LCS ratio of greedy outputs to the expected outputs
    lcs_after: float
    train_pairs: int
    train_accuracy_after: float
    steps: int
    seconds: float
    interrupted: bool
    pairs: list[PairOutcome] = field(default_factory=list)  # per evaluated pair
    training: dict = field(default_factory=dict)  # the run's InversionResult (history, compute)
    # Soft prompts (method soft-prompt): the embeddings themselves on the same pairs; the
    # fields above judge their nearest tokens.
    soft_accuracy_after: float | None = None
    soft_lcs_after: float | None = None
    inversion: InversionResult | None = field(default=None, repr=False)  # not in JSON

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "inversion"}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    def __str__(self) -> str:
        n = len(self.pairs)
        hits_b = sum(p.exact_before for p in self.pairs)
        hits_a = sum(p.exact_after for p in self.pairs)
        lines = [
            f"method   {self.method} on {self.model}, {self.train_pairs} train pairs, "
            f"{self.steps} steps, {self.seconds:.1f} s"
            + (", interrupted" if self.interrupted else ""),
            f"template {visible(self.template)}",
            f"prompt   {visible(self.prompt_text)}",
            f"{self.eval_on:8s} exact {hits_b}/{n} ({self.accuracy_before:.2f}) -> "
            f"{hits_a}/{n} ({self.accuracy_after:.2f}); mean LCS {self.lcs_before:.3f} -> "
            f"{self.lcs_after:.3f}",
        ]
        if self.soft_accuracy_after is not None:
            lines.append(f"soft     exact {self.soft_accuracy_after:.2f}, mean LCS "
                         f"{self.soft_lcs_after:.3f} with the embeddings themselves ({self.eval_on}"
                         "); the lines above judge their nearest tokens")
        if self.eval_on == "eval":
            lines.append(f"train    exact {self.train_accuracy_after:.2f} after tuning")
        return "\n".join(lines)


def pair_context(lm: LoadedModel, template: Template, pairs: Sequence[Pair]
                 ) -> tuple[SpanContext, list[list[int]]]:
    """The fixed ids around the span for every pair, and each pair's output ids."""
    sides = [template.ids(lm, p.input) for p in pairs]
    outputs = [lm.encode(p.output) for p in pairs]
    for p, ids in zip(pairs, outputs, strict=True):
        if not ids:
            raise UsageError(f"output {p.output!r} has no tokens: give it some text")
    ctx = SpanContext.of_pairs(sides, [len(o) for o in outputs])
    return ctx, outputs


def joined_target(lm: LoadedModel, outputs: list[list[int]]) -> list[int]:
    """The K outputs end to end, each padded to the longest with EoS: one row's target."""
    M = max(map(len, outputs))
    pad = lm.eos_token_id if lm.eos_token_id is not None else 0
    return [t for o in outputs for t in o + [pad] * (M - len(o))]


@torch.no_grad()
def greedy_outputs(lm: LoadedModel, template: Template, pairs: Sequence[Pair],
                   prompt_ids: Sequence[int], chunk: int = 16,
                   embeddings: torch.Tensor | None = None) -> list[list[int]]:
    """Each pair's greedy continuation, as many tokens as its output, with the prompt in the
    span (empty prompt: the template alone; embeddings (N, d): a soft prompt), `chunk` pairs
    per batch."""
    found: list[list[int]] = []
    prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=lm.device)  # (1, N)
    if embeddings is not None:
        prompt = torch.zeros(1, embeddings.shape[0], dtype=torch.long, device=lm.device)
    for i in range(0, len(pairs), chunk):
        part = pairs[i:i + chunk]
        ctx, outputs = pair_context(lm, template, part)
        if prompt.shape[1] == 0 and min(len(b) + len(a) for b, a in
                                        zip(ctx.before, ctx.after, strict=True)) == 0:
            # A pair with nothing to condition on cannot be decoded: it says nothing.
            found.extend([[] for _ in part])
            continue
        M = max(map(len, outputs))
        soft = None if embeddings is None else embeddings[None].to(lm.device)
        decoded = DifferentiableLM(lm, context=ctx).greedy_decode(prompt, M * len(part),
                                                                  prompt_embeds=soft)
        rows = decoded.view(len(part), M)
        found.extend(rows[k, : len(o)].tolist() for k, o in enumerate(outputs))
    return found


def tune_prompt(
    lm: LoadedModel,
    train: Sequence[Pair],
    template: Template,
    eval_pairs: Sequence[Pair] | None = None,
    method: str | None = None,
    config: MethodConfig | None = None,
    callback: Callable[[Progress], None] | None = None,
    pairs_per_step: int | None = None,
    **overrides,
) -> TuneResult:
    """Tune one prompt so that every training pair's greedy output is its output; report
    exact-match accuracy and mean LCS before and after on eval_pairs (else the training pairs).
    pairs_per_step: mini-batches of training pairs per step (None: all of them).
    """
    if not train:
        raise UsageError("no training pairs given")
    if any(p.input for p in train) and not template.uses_input:
        raise UsageError("the data has inputs but the template has no {input}: "
                         'add it, e.g. --template "{prompt} {input}"')
    ctx, outputs = pair_context(lm, template, train)
    inversion: InversionResult = run_inversion(
        lm, [joined_target(lm, outputs)], method=method, config=config, context=ctx,
        callback=callback, pairs_per_step=pairs_per_step, **overrides)[0]
    judged = list(eval_pairs) if eval_pairs else list(train)
    expected = [lm.encode(p.output) for p in judged]
    before = greedy_outputs(lm, template, judged, [])
    after = greedy_outputs(lm, template, judged, inversion.prompt_ids)
    outcomes = [
        PairOutcome(p.input, p.output, lm.decode(b), lm.decode(a), b == e, a == e,
                    lcs_ratio(b, e), lcs_ratio(a, e))
        for p, e, b, a in zip(judged, expected, before, after, strict=True)]
    train_after = (after if not eval_pairs else greedy_outputs(lm, template, train,
                                                               inversion.prompt_ids))
    train_exact = [a == o for a, o in zip(train_after, outputs, strict=True)]

    def mean(values):
        values = list(values)
        return sum(values) / len(values)

    soft_acc = soft_lcs = None
    if inversion.embeddings is not None:
        soft = greedy_outputs(lm, template, judged, [], embeddings=inversion.embeddings)
        soft_acc = mean(s == e for s, e in zip(soft, expected, strict=True))
        soft_lcs = mean(lcs_ratio(s, e) for s, e in zip(soft, expected, strict=True))

    return TuneResult(
        method=inversion.method, model=lm.spec, template=str(template),
        prompt_ids=inversion.prompt_ids, prompt_text=inversion.prompt_text,
        eval_on="eval" if eval_pairs else "train",
        accuracy_before=mean(o.exact_before for o in outcomes),
        accuracy_after=mean(o.exact_after for o in outcomes),
        lcs_before=mean(o.lcs_before for o in outcomes),
        lcs_after=mean(o.lcs_after for o in outcomes),
        train_pairs=len(train), train_accuracy_after=mean(train_exact),
        steps=inversion.steps, seconds=inversion.seconds, interrupted=inversion.interrupted,
        pairs=outcomes, training=inversion.to_dict(), soft_accuracy_after=soft_acc,
        soft_lcs_after=soft_lcs, inversion=inversion)
