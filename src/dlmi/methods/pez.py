"""PEZ (Wen et al. 2023): continuous prompt embeddings, projected to their nearest token
embeddings for the forward pass; the gradient at the projection updates the continuous ones."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlmi.methods.base import (
    Batch,
    Method,
    MethodConfig,
    StepOutput,
    _positive,
    random_prompt_ids,
)
from dlmi.methods.registry import register
from dlmi.model.objective import masked_cross_entropy
from dlmi.model.optim import BatchedAdam
from dlmi.options import opt


@dataclass
class PEZConfig(MethodConfig):
    lr: float = opt(0.1, 'AdamW learning rate (Wen et al. 2023)', 'Wen et al. 2023')
    weight_decay: float = opt(0.1, 'AdamW weight decay (Wen et al. 2023)', 'Wen et al. 2023')

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "lr")


@dataclass
class PEZState:
    P: torch.Tensor  # (B, N, d) continuous prompt embeddings
    optimizer: BatchedAdam


@register
class PEZ(Method[PEZState]):
    name = "pez"
    description = "PEZ (Wen et al. 2023): projected continuous embeddings, straight-through"
    config_class = PEZConfig

    def init_state(self, batch: Batch) -> PEZState:
        ids = self.seed_ids(random_prompt_ids(batch.generators, self.config.prompt_length,
                                              self.dlm.vocab_size, self.dlm.device))
        P = self.dlm.embed_prompt(ids).detach().clone().requires_grad_(True)
        return PEZState(P, BatchedAdam([P], lr=self.config.lr,
                                       weight_decay=self.config.weight_decay))

    def project(self, P: torch.Tensor) -> torch.Tensor:
        """Nearest token by cosine similarity: (B, N, d) -> ids (B, N)."""
        return self.dlm.nearest_tokens(P)

    def step(self, state: PEZState, batch: Batch, step: int) -> StepOutput:
        ids = self.project(state.P.detach())
        hard = self.dlm.embed_prompt(ids).detach().requires_grad_(True)  # (B, N, d)
        logits = self.dlm.teacher_forced_logits(hard, batch.target_ids)
        loss = masked_cross_entropy(logits, batch.target_ids, batch.mask)
        one_hot = F.one_hot(ids, self.dlm.vocab_size).to(hard.dtype)
        loss = loss + self.dlm.fluency_penalty(hard, one_hot)
        (grad,) = torch.autograd.grad(loss.sum(), hard)
        state.optimizer.zero_grad()
        state.P.grad = grad  # straight-through: the projection's gradient moves P
        state.optimizer.step()
        return StepOutput(loss=loss.detach(), train_argmax=logits.detach().argmax(-1))

    def current_prompts(self, state: PEZState) -> torch.Tensor:
        return self.project(state.P.detach())

    def keep(self, state: PEZState, index: torch.Tensor) -> PEZState:
        (P,) = state.optimizer.keep(index)
        return PEZState(P, state.optimizer)
