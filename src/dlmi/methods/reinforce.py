"""REINFORCE (Williams 1992) on the prompt distribution softmax(Z): the unbiased, high-variance
estimator the paper compares with (Section 4.2, Equation 5, Table 5).

Each step draws `samples` hard prompts x ~ Cat(softmax(Z)), scores each by the subject model's
cross-entropy of the target given x (one teacher-forced pass on hard ids, no gradient through
the model), and follows (L(x) - b) * grad log p(x) with an exponential moving average baseline b.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlmi.errors import UsageError
from dlmi.methods.base import (
    Batch,
    Method,
    MethodConfig,
    StepOutput,
    _at_least,
    _positive,
    per_row,
)
from dlmi.methods.registry import register
from dlmi.model.estimators import gumbel_noise
from dlmi.model.optim import BatchedAdam
from dlmi.options import opt


@dataclass
class ReinforceConfig(MethodConfig):
    samples: int = opt(8, 'Table 5 num_samples', 'Table 5')
    lr: float = opt(0.1, 'Table 5 learning_rate', 'Table 5')
    baseline_beta: float = opt(0.9, 'Table 5 reinforce_baseline_beta (EMA coefficient)', 'Table 5')
    reward_scale: float = opt(1.0, 'Table 5 reinforce_reward_scale', 'Table 5')
    use_baseline: bool = opt(True, 'Table 5 reinforce_use_baseline', 'Table 5')
    init_std: float = opt(1.0, 'Z ~ N(0, 1) as for DLMI')

    def __post_init__(self):
        super().__post_init__()
        _at_least(self, "samples", 1)
        _positive(self, "lr")
        if not 0 <= self.baseline_beta < 1:
            raise UsageError(f"baseline_beta must be in [0, 1), got {self.baseline_beta}")


@dataclass
class ReinforceState:
    Z: torch.Tensor  # (B, N, V)
    baseline: torch.Tensor | None  # (B,) EMA of the loss; None before the first step
    optimizer: BatchedAdam


@register
class Reinforce(Method[ReinforceState]):
    name = "reinforce"
    description = "REINFORCE on the prompt distribution with an EMA baseline (unbiased)"
    config_class = ReinforceConfig

    def init_state(self, batch: Batch) -> ReinforceState:
        N, V, dev = self.config.prompt_length, self.dlm.vocab_size, self.dlm.device
        Z = per_row(batch.generators, lambda g: torch.randn(N, V, generator=g, device=dev))
        Z = self.seed_logits(Z * self.config.init_std).requires_grad_(True)
        return ReinforceState(Z, None, BatchedAdam([Z], lr=self.config.lr))

    def surrogate(self, state: ReinforceState, batch: Batch):
        """Score-function surrogate whose gradient is the REINFORCE estimate.

        Returns (surrogate (B,), loss of each sample (B, S), samples (B, S, N)).
        """
        cfg = self.config
        Z = state.Z
        B, N, V = Z.shape
        S = cfg.samples
        with torch.no_grad():  # Gumbel-max: exact samples of Cat(softmax(Z))
            noise = per_row(batch.generators, lambda g: gumbel_noise((S, N, V), g, Z.device))
            x = (Z[:, None] + noise).argmax(-1)  # (B, S, N)
            loss, _ = self.dlm.hard_losses(x.view(B * S, N),
                                           batch.target_ids.repeat_interleave(S, 0),
                                           batch.mask.repeat_interleave(S, 0), chunk=B * S)
            loss = loss.view(B, S)
        logp = torch.log_softmax(Z, -1)[:, None].expand(B, S, N, V)
        logp_x = logp.gather(-1, x[..., None]).squeeze(-1).sum(-1)  # (B, S) log p(x)
        use = cfg.use_baseline and state.baseline is not None
        baseline = state.baseline[:, None] if use else 0.0
        advantage = cfg.reward_scale * (loss - baseline)  # (B, S), no gradient
        return (advantage * logp_x).mean(1), loss, x

    def step(self, state: ReinforceState, batch: Batch, step: int) -> StepOutput:
        surrogate, loss, x = self.surrogate(state, batch)
        state.optimizer.zero_grad()
        surrogate.sum().backward()
        state.optimizer.step()
        mean = loss.mean(1)
        beta = self.config.baseline_beta
        # The first baseline is the first mean loss (an EMA started at 0 would inflate advantages).
        old = state.baseline
        state.baseline = mean if old is None else beta * old + (1 - beta) * mean
        return StepOutput(loss=mean, candidates=x)

    @torch.no_grad()
    def current_prompts(self, state: ReinforceState) -> torch.Tensor:
        return state.Z.argmax(-1)

    def keep(self, state: ReinforceState, index: torch.Tensor) -> ReinforceState:
        (Z,) = state.optimizer.keep(index)
        base = state.baseline[index] if state.baseline is not None else None
        return ReinforceState(Z, base, state.optimizer)
