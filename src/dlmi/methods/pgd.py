"""PGD for language models (after Geisler et al. 2024, "Attacking Large Language Models with
Projected Gradient Descent", arXiv 2402.09154): the prompt is a point on the probability
simplex per position, moved by Adam on the teacher-forced loss of its soft embedding and,
after every step, projected first onto the simplex and then onto the distributions whose
Tsallis entropy (q = 2, the Gini impurity 1 - sum p^2) is at most a bound that tightens over
the run. The entropy bound keeps the relaxation error in check: it pushes each position away
from the uniform distribution over its support, toward one-hot, so the argmax that is scored
as a hard prompt stays close to what the gradient optimised.

Each step scores every start's argmax as a hard prompt and keeps the best (relaxed_onehot); a
start whose own best hard prompt has not improved for `patience` steps starts again from it,
one-hot. Defaults after the paper's Appendix A as its public ports read it: Adam at lr 0.11, the
gradient clipped to norm 20 per position, the entropy factor ramped from 0 to 0.4 over 250
steps, patience 100, a random dense start; the learning rate held for 100 steps, then cosine-
annealed with warm restarts every 60 steps. Not ported: the flexible prompt length (a learned
mask over prompt positions) and the coupling of the entropy bound to the learning rate and to
the measured relaxation gap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from dlmi.errors import UsageError
from dlmi.methods.base import Batch, StepOutput, _at_least, _positive
from dlmi.methods.registry import register
from dlmi.methods.relaxed_onehot import (
    RelaxedOneHotConfig,
    RelaxedOneHotMethod,
    RelaxedOneHotState,
)
from dlmi.model.optim import BatchedAdam
from dlmi.options import opt

PAPER = "Geisler et al. 2024"


@dataclass
class PGDConfig(RelaxedOneHotConfig):
    lr: float = opt(0.11, "Adam learning rate on the relaxed one-hot", PAPER)
    grad_clip: float = opt(20.0, "the gradient's norm at each prompt position is clipped to "
                           "this (0: no clipping)", PAPER)
    # Both public ports pass 0.325 to torch's warm-restart schedule as its absolute minimum,
    # which lies above lr 0.11; we read it as a share of lr, so the rate never rises above lr.
    lr_hold: int = opt(100, "steps at the full learning rate before the warm restarts", PAPER)
    lr_period: int = opt(60, "steps per cosine cycle after lr_hold (each restarts at lr)", PAPER)
    lr_floor: float = opt(0.325, "share of lr each cosine cycle anneals down to", PAPER)
    entropy_factor: float = opt(
        0.4, "strength of the entropy bound at the end of its ramp: the Gini impurity of a "
        "position with d tokens in its support may be at most (1 - factor) (d - 1) / d "
        "(0: no bound, 1: one-hot)", PAPER)
    entropy_steps: int = opt(250, "steps over which the entropy factor ramps up from 0", PAPER)
    patience: int = opt(100, "steps without a better hard prompt of its own before a start "
                        "goes back to that prompt, one-hot (0: never)", PAPER)

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "lr")
        _at_least(self, "grad_clip", 0.0)
        _at_least(self, "lr_hold", 0)
        _at_least(self, "lr_period", 1)
        _at_least(self, "entropy_steps", 1)
        _at_least(self, "patience", 0)
        for name in ("lr_floor", "entropy_factor"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UsageError(f"{name} must be between 0 and 1, got {getattr(self, name)}: "
                                 f"change --set {name}=VALUE")


@dataclass
class PGDState(RelaxedOneHotState):
    optimizer: BatchedAdam | None = None  # Adam on X (its one parameter, moved in place)
    start_best: torch.Tensor | None = None  # (B, R, N) each start's own best hard prompt
    start_loss: torch.Tensor | None = None  # (B, R) its loss
    stall: torch.Tensor | None = None  # (B, R) steps since that start's best improved


def simplex_projection(X: torch.Tensor, head: int = 512) -> torch.Tensor:
    """The Euclidean projection of each row of X (..., V) onto the probability simplex (Duchi
    et al. 2008): max(x - theta, 0) with theta chosen so that the row sums to 1. theta is read
    from each row's `head` largest entries where the support is smaller than that (the
    support test is monotone along the sorted row), else from the fully sorted row: sorting
    the whole vocabulary for every position costs more than the model late in a run."""
    V = X.shape[-1]
    theta = _threshold(X.topk(min(head, V), dim=-1).values)  # (..., 1), NaN: support too big
    full = theta.isnan().squeeze(-1)
    if bool(full.any()):
        theta[full] = _threshold(X[full].sort(-1, descending=True).values, complete=True)
    return (X - theta).clamp_min(0.0)


def _threshold(mu: torch.Tensor, complete: bool = False) -> torch.Tensor:
    """theta of simplex_projection from the largest entries mu (..., K) of each row, sorted
    descending: (..., 1); NaN where every one of the K is in the support and the row may hold
    more (not `complete`)."""
    K = mu.shape[-1]
    cum = mu.cumsum(-1) - 1.0
    k = torch.arange(1, K + 1, device=mu.device, dtype=mu.dtype)
    rho = (mu - cum / k > 0).sum(-1, keepdim=True).clamp_min(1)  # (..., 1) support size
    theta = cum.gather(-1, rho - 1) / rho
    if not complete:
        theta = theta.masked_fill(rho == K, float("nan"))
    return theta


def entropy_projection(X: torch.Tensor, factor: float) -> torch.Tensor:
    """Each row of X (..., V), a distribution on the simplex, with its Gini impurity bounded by
    (1 - factor) (d - 1) / d, d its support size: a row too close to the uniform distribution c
    over its support (||x - c||^2 < factor (d - 1) / d, the same bound on the simplex) is
    pushed straight away from c onto that sphere and projected back onto the simplex."""
    if factor <= 0.0:
        return X
    support = X > 0
    d = support.sum(-1, keepdim=True).to(X.dtype)  # (..., 1)
    centre = support / d
    radius = (factor * (d - 1) / d).sqrt()
    away = X - centre  # zero off the support
    dist = away.norm(dim=-1, keepdim=True)
    inside = (dist < radius).squeeze(-1)  # (...,) rows that break the bound
    if not bool(inside.any()):
        return X
    out = X.clone()
    pushed = centre[inside] + away[inside] * (radius[inside] / dist[inside].clamp_min(1e-12))
    out[inside] = simplex_projection(pushed)
    return out


@register
class PGD(RelaxedOneHotMethod):
    name = "pgd"
    description = ("PGD (Geisler et al. 2024): Adam on the relaxed one-hot, projected onto the "
                   "simplex and under an entropy bound that tightens toward one-hot")
    config_class = PGDConfig
    state_class = PGDState

    def more_state(self, X: torch.Tensor) -> dict:
        B, R, N, _ = X.shape
        return {"optimizer": BatchedAdam([X], lr=self.config.lr),
                "start_best": X.argmax(-1),
                "start_loss": torch.full((B, R), float("inf"), device=X.device),
                "stall": torch.zeros(B, R, dtype=torch.long, device=X.device)}

    def learning_rate(self, step: int) -> float:
        """Held at lr for lr_hold steps, then cosine cycles of lr_period steps from lr down to
        lr_floor * lr, each restarting at lr."""
        cfg = self.config
        if step <= cfg.lr_hold:
            return cfg.lr
        phase = ((step - cfg.lr_hold - 1) % cfg.lr_period) / cfg.lr_period
        low = cfg.lr_floor * cfg.lr
        return low + (cfg.lr - low) * (1 + math.cos(math.pi * phase)) / 2

    def entropy_at(self, step: int) -> float:
        cfg = self.config
        return cfg.entropy_factor * min(1.0, step / cfg.entropy_steps)

    def step(self, state: PGDState, batch: Batch, step: int) -> StepOutput:
        cfg = self.config
        grad, argmax = self.relaxed_loss(state, batch)  # grad (B, R, N, V)
        with torch.no_grad():
            if cfg.grad_clip:
                norm = grad.norm(dim=-1, keepdim=True)  # (B, R, N, 1)
                grad = grad * (cfg.grad_clip / norm.clamp_min(cfg.grad_clip))
            state.X.grad = grad
            state.optimizer.lr = self.learning_rate(step)
            state.optimizer.step()  # X is the optimizer's parameter: every change in place
            state.X.data = entropy_projection(simplex_projection(state.X), self.entropy_at(step))
            cand, loss, _ = self.keep_best(state, batch)  # (B, R, K, N), (B, R, K)
            self._restart_stalled(state, cand[:, :, 0], loss[:, :, 0])
        return StepOutput(loss=state.best_loss.clone(), train_argmax=argmax[:, 0],
                          solved=state.best_exact.clone())

    def _restart_stalled(self, state: PGDState, hard: torch.Tensor, loss: torch.Tensor) -> None:
        """Track each start's own best hard prompt (its argmax `hard` (B, R, N) scored `loss`
        (B, R) this step); a start stalled for `patience` steps goes back to it, one-hot."""
        better = loss < state.start_loss  # (B, R)
        state.start_best = torch.where(better[..., None], hard, state.start_best)
        state.start_loss = torch.where(better, loss, state.start_loss)
        state.stall = torch.where(better, 0, state.stall + 1)
        if not self.config.patience:
            return
        back = state.stall >= self.config.patience  # (B, R)
        if bool(back.any()):
            one_hot = torch.zeros_like(state.X[back]).scatter_(
                -1, state.start_best[back][..., None], 1.0)  # (S, N, V)
            state.X.data[back] = one_hot
            state.stall[back] = 0

    def keep(self, state: PGDState, index: torch.Tensor) -> PGDState:
        rows = {f.name: getattr(state, f.name)[index] for f in fields(state)
                if f.name not in ("X", "optimizer")}
        (X,) = state.optimizer.keep(index)  # X with its Adam moments
        return PGDState(X=X, optimizer=state.optimizer, **rows)
