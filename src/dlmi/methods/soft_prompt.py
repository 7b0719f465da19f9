"""Soft prompt tuning (Lester et al. 2021): N free continuous embeddings, trained with teacher
forcing by Adam, for users who control the model and can feed embeddings.

Its success is the greedy output of the embeddings themselves (the runner judges them through
`current_embeddings`); `current_prompts`, the nearest token of each embedding, is its hard
projection, judged as every method's prompt is, so both are reported side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlmi.errors import UsageError
from dlmi.methods.base import Batch, Method, MethodConfig, StepOutput, _positive, random_prompt_ids
from dlmi.methods.registry import register
from dlmi.model.objective import Objective, check_objective_name
from dlmi.model.optim import BatchedAdam
from dlmi.options import opt


@dataclass
class SoftPromptConfig(MethodConfig):
    lr: float = opt(0.01, "Adam learning rate on the embeddings")
    objective: str = opt("ce", "loss: ce (cross-entropy) or cw (margin)")
    init_from: str | None = opt(
        None, "start from a saved soft prompt (a PEFT prompt-tuning folder) instead of the "
        "embeddings of random tokens")

    def __post_init__(self):
        super().__post_init__()
        _positive(self, "lr")
        check_objective_name(self.objective)


@dataclass
class SoftPromptState:
    P: torch.Tensor  # (B, N, d) the soft prompt
    optimizer: BatchedAdam


@register
class SoftPrompt(Method[SoftPromptState]):
    name = "soft-prompt"
    description = "soft prompt tuning: N continuous embeddings (judged as embeddings and as "
    description += "their nearest tokens)"
    config_class = SoftPromptConfig

    def init_state(self, batch: Batch) -> SoftPromptState:
        cfg = self.config
        if cfg.init_from:
            from dlmi.model.peft_adapter import load_soft_prompt

            saved = load_soft_prompt(cfg.init_from)
            if saved.shape != (cfg.prompt_length, self.dlm.W_E.shape[1]):
                raise UsageError(f"the soft prompt in {cfg.init_from} is {tuple(saved.shape)}, "
                                 f"this run needs ({cfg.prompt_length}, {self.dlm.W_E.shape[1]})"
                                 f": set --prompt-length {saved.shape[0]} or use another model")
            start = saved.to(self.dlm.device, self.dlm.W_E.dtype)[None].repeat(batch.size, 1, 1)
        else:
            ids = self.seed_ids(random_prompt_ids(batch.generators, cfg.prompt_length,
                                                  self.dlm.vocab_size, self.dlm.device))
            start = self.dlm.embed_prompt(ids)
        P = start.detach().clone().requires_grad_(True)
        return SoftPromptState(P, BatchedAdam([P], lr=cfg.lr))

    def step(self, state: SoftPromptState, batch: Batch, step: int) -> StepOutput:
        logits = self.dlm.teacher_forced_logits(state.P, batch.target_ids)
        loss = Objective(self.config.objective)(logits, batch.target_ids, batch.mask)
        state.optimizer.zero_grad()
        loss.sum().backward()
        state.optimizer.step()
        return StepOutput(loss=loss.detach(), train_argmax=logits.detach().argmax(-1))

    def current_prompts(self, state: SoftPromptState) -> torch.Tensor:
        """Nearest token (cosine) of each embedding: (B, N)."""
        return self.dlm.nearest_tokens(state.P.detach())

    def current_embeddings(self, state: SoftPromptState) -> torch.Tensor:
        return state.P.detach()

    def keep(self, state: SoftPromptState, index: torch.Tensor) -> SoftPromptState:
        (P,) = state.optimizer.keep(index)
        return SoftPromptState(P, state.optimizer)
