"""GCG (Zou et al. 2023): greedy coordinate search guided by token gradients.

Each step takes the gradient of the loss with respect to the one-hot prompt, keeps the top-k
tokens per position (most negative gradient), samples `search_width` single-token swaps, drops
swaps whose text does not re-tokenise to the same ids, evaluates the rest in memory-bounded
chunks and moves to the best one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlmi.methods.base import (
    Batch,
    IncumbentSearch,
    IncumbentState,
    MethodConfig,
    ScreenOptions,
    StepOutput,
    _at_least,
    per_row,
    walk_on,
)
from dlmi.methods.registry import register
from dlmi.model.objective import masked_cross_entropy
from dlmi.model.screening import screen_model, screened_variant_losses
from dlmi.options import opt


@dataclass
class GCGConfig(ScreenOptions, MethodConfig):
    top_k: int = opt(256, 'candidate tokens per position (Zou et al. 2023)', 'Zou et al. 2023')
    search_width: int = opt(
        512, 'single-swap candidates per step (Zou et al. 2023)', 'Zou et al. 2023')
    chunk_size: int = opt(128, 'candidates per forward pass: bounds memory')
    filter_roundtrip: bool = opt(True, 'keep only prompts whose text re-tokenises to the same ids')
    # GCG moves every step; between two evaluation points only its last prompt is judged.
    judge_walk: bool = opt(False, "offer every prompt it stood on since the last evaluation "
                           "point (up to eval_every) to the greedy check too, as dlmi-search's "
                           "judge_walk")

    def __post_init__(self):
        super().__post_init__()
        _at_least(self, "top_k", 1)
        _at_least(self, "search_width", 1)
        _at_least(self, "chunk_size", 1)


def sample_swaps(prompts: torch.Tensor, top_tokens: torch.Tensor, width: int,
                 generators: list[torch.Generator]) -> torch.Tensor:
    """Single-token swaps of each row's prompt. prompts (B, N), top_tokens (B, N, K) ->
    candidates (B, width, N). Positions are spread evenly over the prompt (as in GCG), the
    replacement is drawn uniformly from that position's top-k."""
    B, N = prompts.shape
    K = top_tokens.shape[-1]
    dev = prompts.device
    pos = (torch.arange(width, device=dev) * N // width)[None].expand(B, width)  # (B, W)
    pick = per_row(generators, lambda g: torch.randint(K, (width,), generator=g, device=dev))
    tokens = top_tokens.gather(1, pos[..., None].expand(B, width, K))  # (B, W, K)
    new = tokens.gather(2, pick[..., None]).squeeze(-1)  # (B, W)
    cand = prompts[:, None].repeat(1, width, 1)
    cand.scatter_(2, pos[..., None], new[..., None])
    return cand


@register
class GCG(IncumbentSearch):
    name = "gcg"
    description = "GCG (Zou et al. 2023): top-k token gradients, best of many single swaps"
    config_class = GCGConfig

    def token_gradients(self, prompts: torch.Tensor, batch: Batch):
        """Loss (B,) and its gradient w.r.t. the one-hot prompt (B, N, V)."""
        one_hot = F.one_hot(prompts, self.dlm.vocab_size).to(self.dlm.W_E.dtype)
        one_hot.requires_grad_(True)
        embeds = self.dlm.soft_embed(one_hot)
        logits = self.dlm.teacher_forced_logits(embeds, batch.target_ids,
                                                soft_positions=prompts.shape[1])
        loss = masked_cross_entropy(logits, batch.target_ids, batch.mask)
        loss = loss + self.dlm.fluency_penalty(embeds, one_hot)
        (grad,) = torch.autograd.grad(loss.sum(), one_hot)
        return loss.detach(), grad

    def candidate_losses(self, prompts: torch.Tensor, cand: torch.Tensor, batch: Batch,
                         keep: torch.Tensor | None = None) -> torch.Tensor:
        """cand (B, W, N), swaps of prompts (B, N) -> teacher-forced loss (B, W), evaluated
        chunk by chunk, each candidate from its first swapped position on (the prompt's KV
        cache holds the rest); with `keep` (B, W) bool, only those candidates are scored and
        the others get +inf (as do the swaps a `screen` drops)."""
        B, W, N = cand.shape
        keep = torch.ones(B, W, dtype=torch.bool, device=cand.device) if keep is None else keep
        row = torch.arange(B, device=cand.device)[:, None].expand(B, W)[keep]  # (R,)
        args = (prompts, cand[keep], row, batch.target_ids, batch.mask)
        low = screen_model(self.dlm, self.config.screen) if W > self.config.screen_keep else None
        if low is None:  # no screen, or it would keep every swap anyway
            scored, _ = self.dlm.variant_losses(*args, self.config.chunk_size)
        else:  # those the screen drops get +inf as well
            scored = screened_variant_losses(self.dlm, low, *args, self.config.screen_keep,
                                             self.config.chunk_size, verdicts=False).loss
        return torch.full((B, W), float("inf"), device=cand.device).masked_scatter(keep, scored)

    def step(self, state: IncumbentState, batch: Batch, step: int) -> StepOutput:
        cfg = self.config
        loss, grad = self.token_gradients(state.prompts, batch)
        top = (-grad).topk(min(cfg.top_k, grad.shape[-1]), dim=-1).indices  # (B, N, K)
        cand = sample_swaps(state.prompts, top, cfg.search_width, batch.generators)
        if cfg.filter_roundtrip:  # before scoring: a filtered swap costs no forward
            ok = self.dlm.round_trips(cand)  # (B, W)
            # A row with no valid swap keeps all of them rather than stalling.
            ok |= ~ok.any(1, keepdim=True)
            losses = self.candidate_losses(state.prompts, cand, batch, ok)
        else:
            losses = self.candidate_losses(state.prompts, cand, batch)  # (B, W)
        best_loss, best = losses.min(1)
        state.prompts = cand[torch.arange(cand.shape[0], device=cand.device), best]
        state.loss = best_loss
        order = losses.argsort(1)[:, :4]  # a few runners-up are worth a greedy check too
        offered = cand.gather(1, order[..., None].expand(-1, -1, cand.shape[2]))  # (B, 4, N)
        if cfg.judge_walk:  # the prompts before this one, since the last evaluation point
            state.walk = walk_on(state.walk, state.prompts, cfg.eval_every)
            offered = torch.cat([offered, state.walk[:, 1:]], 1)
        return StepOutput(loss=best_loss, candidates=offered)
