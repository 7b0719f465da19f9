"""SODA (Skapars et al. 2025) as configured in the paper's Table 5.

No sampling: the soft prompt is softmax(Z / 0.05) @ W_E, trained with teacher forcing by Adam
without bias correction (betas 0.9, 0.995, lr 0.03). After each step the logits decay by 0.98;
the optimiser state is reset every 50 steps and the logits re-initialised every 1500.
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
from dlmi.model.objective import masked_cross_entropy
from dlmi.model.optim import BatchedAdam
from dlmi.options import opt


@dataclass
class SODAConfig(MethodConfig):
    lr: float = opt(0.03, 'Adam learning rate on the logits', 'Table 5')
    beta1: float = opt(0.9, 'Table 5 soda_beta1', 'Table 5')
    beta2: float = opt(0.995, 'Table 5 soda_beta2', 'Table 5')
    bias_correction: bool = opt(False, 'Table 5 soda_bias_correction', 'Table 5')
    temperature: float = opt(0.05, 'Table 5: softmax temperature of the logits', 'Table 5')
    decay: float = opt(0.98, 'Table 5 soda_decay_rate: logits *= decay after each step', 'Table 5')
    reset_every: int = opt(50, 'Table 5 soda_reset_epoch: Adam state reset period', 'Table 5')
    reinit_every: int = opt(
        1500, 'Table 5 soda_reinit_epoch: logits re-initialised every this many steps',
        'Table 5')
    # Zeros (Table 5 init_strategy) at the start; a re-initialisation to zeros would replay the
    # same deterministic trajectory, so re-initialisations draw N(0, reinit_std^2) instead.
    reinit_std: float = opt(1.0, 'std of the logits drawn at each re-initialisation')

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "lr", "temperature")
        if not 0 < self.decay <= 1:
            raise UsageError(f"decay must be in (0, 1], got {self.decay}")
        _at_least(self, "reset_every", 1)
        _at_least(self, "reinit_every", 1)


@dataclass
class SODAState:
    Z: torch.Tensor  # (B, N, V)
    optimizer: BatchedAdam


@register
class SODA(Method[SODAState]):
    name = "soda"
    description = "SODA (Skapars et al. 2025): tempered softmax prompt, decayed Adam, restarts"
    config_class = SODAConfig

    def init_state(self, batch: Batch) -> SODAState:
        cfg = self.config
        Z = self.seed_logits(torch.zeros(batch.size, cfg.prompt_length, self.dlm.vocab_size,
                                         device=self.dlm.device)).requires_grad_(True)
        opt = BatchedAdam([Z], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                          bias_correction=cfg.bias_correction)
        return SODAState(Z, opt)

    def step(self, state: SODAState, batch: Batch, step: int) -> StepOutput:
        cfg = self.config
        p = torch.softmax(state.Z / cfg.temperature, -1)  # (B, N, V)
        embeds = self.dlm.soft_embed(p)
        logits = self.dlm.teacher_forced_logits(embeds, batch.target_ids,
                                                soft_positions=cfg.prompt_length)
        loss = masked_cross_entropy(logits, batch.target_ids, batch.mask)  # (B,)
        loss = loss + self.dlm.fluency_penalty(embeds, p)
        state.optimizer.zero_grad()
        loss.sum().backward()
        state.optimizer.step()
        with torch.no_grad():
            state.Z.mul_(cfg.decay)
            if step % cfg.reinit_every == 0:
                N, V = state.Z.shape[1:]
                fresh = per_row(batch.generators, lambda g: torch.randn(
                    N, V, generator=g, device=state.Z.device))
                state.Z.copy_(fresh * cfg.reinit_std)
                state.optimizer.reset()
            elif step % cfg.reset_every == 0:
                state.optimizer.reset()
        return StepOutput(loss=loss.detach(), temperature=torch.full_like(loss, cfg.temperature),
                          train_argmax=logits.detach().argmax(-1))

    @torch.no_grad()
    def current_prompts(self, state: SODAState) -> torch.Tensor:
        return state.Z.argmax(-1)

    def keep(self, state: SODAState, index: torch.Tensor) -> SODAState:
        (Z,) = state.optimizer.keep(index)
        return SODAState(Z, state.optimizer)
