"""What the relaxed one-hot methods (ADC, PGD) share: the prompt is a point on the probability
simplex per position, X (B, R, N, V) for B targets, R starts, N positions and the V tokens the
prompt may use; its soft embedding X @ W_E is what the model reads. Each step scores every
start's argmax as a hard prompt (with `samples` more drawn from X) in one no-grad batch and
keeps the best hard prompt so far, proven exact when its argmax hits every target position.
The runner judges it by greedy decoding.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from dlmi.methods.base import Batch, Method, MethodConfig, _at_least, per_row, set_rows
from dlmi.model.objective import Objective, check_objective_name
from dlmi.options import opt


@dataclass
class RelaxedOneHotConfig(MethodConfig):
    starts: int = opt(
        8, 'relaxed prompts per target optimised side by side, from different random starts; '
        "the best hard prompt of all counts (8 costs about dlmi-search's FLOPs per step)")
    objective: str = opt("ce", "loss of the gradient and of the hard prompts: ce (as both "
                         "papers), cw, cw-prefix or cw-first (see dlmi-search)",
                         'Hu et al. 2024; Geisler et al. 2024')
    cw_margin: float = opt(1.0, "cw objectives: a position won by this many logits earns "
                           "nothing more")
    # The relaxed prompt can win every target position while its argmax does not (the
    # relaxation gap); hard prompts drawn from X itself are scored beside the argmax.
    samples: int = opt(0, "hard prompts drawn from each start's X per step (each position "
                       "from its distribution) and scored beside its argmax (0: the argmax "
                       "alone, as the papers)")
    chunk_size: int = opt(64, 'hard prompts per no-grad forward: bounds memory')

    def __post_init__(self):
        super().__post_init__()
        _at_least(self, "starts", 1)
        _at_least(self, "samples", 0)
        _at_least(self, "chunk_size", 1)
        _at_least(self, "cw_margin", 0.0)
        check_objective_name(self.objective)

    @property
    def loss(self) -> Objective:
        return Objective(self.objective, self.cw_margin)


@dataclass
class RelaxedOneHotState:
    X: torch.Tensor  # (B, R, N, V) relaxed prompts: each position a distribution over tokens
    best: torch.Tensor  # (B, N) the best hard prompt so far (exact first)
    best_loss: torch.Tensor  # (B,) its loss (inf before the first step)
    best_exact: torch.Tensor  # (B,) bool: proven to decode to the target


class RelaxedOneHotMethod(Method):
    """Subclasses set `state_class` (a RelaxedOneHotState with more (B, ...) tensors, built by
    `more_state`) and write `step`."""

    state_class: type = RelaxedOneHotState

    def init_state(self, batch: Batch):
        cfg, dev = self.config, self.dlm.device
        R, N, V = cfg.starts, cfg.prompt_length, self.dlm.vocab_size
        X = per_row(batch.generators,
                    lambda g: torch.rand(R, N, V, generator=g, device=dev))  # (B, R, N, V)
        X = X / X.sum(-1, keepdim=True)  # dense: the first projection sparsifies it
        ids = self.initial_ids()
        if ids is not None:  # a user's start: those positions one-hot on its tokens
            L = len(ids)
            X[:, :, :L] = 0.0
            X[:, :, torch.arange(L, device=dev), ids] = 1.0
        B = X.shape[0]
        return self.state_class(X, X[:, 0].argmax(-1),
                                torch.full((B,), float("inf"), device=dev),
                                torch.zeros(B, dtype=torch.bool, device=dev),
                                **self.more_state(X))

    def more_state(self, X: torch.Tensor) -> dict:
        """The subclass's own state fields at the start, from X (B, R, N, V)."""
        return {}

    def relaxed_loss(self, state, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The gradient on X of each start's teacher-forced loss under its soft prompt,
        grad (B, R, N, V), and the training forward's argmax (B, R, M)."""
        cfg = self.config
        B, R, N, V = state.X.shape
        targets = batch.target_ids.repeat_interleave(R, 0)  # (B*R, M)
        mask = batch.mask.repeat_interleave(R, 0)
        x = state.X.view(B * R, N, V).detach().requires_grad_(True)
        embeds = self.dlm.soft_embed(x)  # (B*R, N, d)
        logits = self.dlm.teacher_forced_logits(embeds, targets, soft_positions=N)
        loss = cfg.loss(logits, targets, mask)
        loss = loss + self.dlm.fluency_penalty(embeds, x)
        (grad,) = torch.autograd.grad(loss.sum(), x)  # each start's own gradient
        return grad.view(B, R, N, V), logits.detach().argmax(-1).view(B, R, -1)

    @torch.no_grad()
    def keep_best(self, state, batch: Batch) -> tuple[torch.Tensor, torch.Tensor,
                                                       torch.Tensor]:
        """Score every start's argmax as a hard prompt, with `samples` drawn from its X, and
        keep the best one so far: an exact prompt beats any inexact one, then the lower loss.
        -> the scored prompts (B, R, K, N), their losses (B, R, K) and exact flags (B, R, K),
        the argmax first (K = 1 + samples); a prompt that fails the round trip has loss inf."""
        cfg = self.config
        B, R, N, V = state.X.shape
        S, dev = cfg.samples, state.X.device
        targets = batch.target_ids.repeat_interleave(R, 0)  # (B*R, M)
        mask = batch.mask.repeat_interleave(R, 0)
        hard = state.X.argmax(-1)  # (B, R, N)
        cand = hard[:, :, None]  # (B, R, 1 + S, N): the argmax first, then the draws
        if S:  # the draws share their argmax's unchanged start: scored as its variants
            cand = torch.cat([cand, self._draw(state.X, batch)], 2)
            K = cand.shape[2]
            rows = torch.arange(B * R, device=dev).repeat_interleave(K)  # (B*R*K,) its base
            loss, exact = self.dlm.variant_losses(hard.view(B * R, N), cand.view(-1, N), rows,
                                                  targets, mask, cfg.chunk_size,
                                                  cfg.loss)
        else:  # the argmax alone: one forward each, no base pass to share
            K = 1
            loss, exact = self.dlm.hard_losses(hard.view(B * R, N), targets, mask,
                                               cfg.chunk_size, cfg.loss)
        flat = cand.view(B, R * K, N)
        loss, exact = loss.view(B, R * K), exact.view(B, R * K)
        if cfg.roundtrip:  # a prompt that does not survive as text is never kept
            safe = self.dlm.round_trips(flat)  # (B, R*K)
            loss = loss.masked_fill(~safe, float("inf"))
            exact = exact & safe
        key = loss - exact.float() * 1e9  # (B, R*K)
        top = key.argmin(1)
        rows = torch.arange(B, device=dev)
        better = key[rows, top] < state.best_loss - state.best_exact.float() * 1e9
        set_rows(state, "best", better, flat[rows, top], loss[rows, top], exact[rows, top])
        return cand, loss.view(B, R, K), exact.view(B, R, K)

    def _draw(self, X: torch.Tensor, batch: Batch) -> torch.Tensor:
        """`samples` hard prompts per start, each position drawn from its row of X
        (B, R, N, V), row b from its own generator: (B, R, S, N)."""
        B, R, N, V = X.shape
        S = self.config.samples
        drawn = torch.stack([
            torch.multinomial(X[b].reshape(R * N, V), S, replacement=True, generator=g)
            for b, g in enumerate(batch.generators)])  # (B, R*N, S)
        return drawn.view(B, R, N, S).permute(0, 1, 3, 2)

    def current_prompts(self, state) -> torch.Tensor:
        return state.best  # before the first step: the first start's argmax

    def keep(self, state, index: torch.Tensor):
        return type(state)(*(getattr(state, f.name)[index] for f in fields(state)))
