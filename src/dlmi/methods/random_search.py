"""Random search: the lower bound every method must beat, and the fast test double.

Each step proposes `samples` prompts, each the incumbent with one random position set to a
random token, scores them by teacher-forced cross-entropy (no gradients) and keeps the best if
it beats the incumbent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlmi.methods.base import (
    Batch,
    IncumbentSearch,
    IncumbentState,
    MethodConfig,
    StepOutput,
    _at_least,
)
from dlmi.methods.registry import register
from dlmi.options import opt


@dataclass
class RandomConfig(MethodConfig):
    samples: int = opt(8, "proposals per step, as many forward passes as DLMI's 8 samples")

    def __post_init__(self):
        super().__post_init__()
        _at_least(self, "samples", 1)


@register
class RandomSearch(IncumbentSearch):
    name = "random"
    description = "random single-token mutations of the best prompt so far (lower bound)"
    config_class = RandomConfig

    @torch.no_grad()
    def step(self, state: IncumbentState, batch: Batch, step: int) -> StepOutput:
        B, N = state.prompts.shape
        S, V, dev = self.config.samples, self.dlm.vocab_size, self.dlm.device

        def propose(g):
            pos = torch.randint(N, (S,), generator=g, device=dev)
            tok = torch.randint(V, (S,), generator=g, device=dev)
            return pos, tok

        proposals = [propose(g) for g in batch.generators]
        pos = torch.stack([p for p, _ in proposals])  # (B, S)
        tok = torch.stack([t for _, t in proposals])  # (B, S)
        cand = state.prompts[:, None].repeat(1, S, 1)  # (B, S, N)
        cand.scatter_(2, pos[..., None], tok[..., None])
        loss, _ = self.dlm.hard_losses(cand.view(B * S, N),
                                       batch.target_ids.repeat_interleave(S, 0),
                                       batch.mask.repeat_interleave(S, 0), chunk=B * S)
        loss = loss.view(B, S)
        best_loss, best = loss.min(1)
        better = best_loss < state.loss
        chosen = cand[torch.arange(B, device=dev), best]
        state.prompts = torch.where(better[:, None], chosen, state.prompts)
        state.loss = torch.where(better, best_loss, state.loss)
        return StepOutput(loss=state.loss.clone())
