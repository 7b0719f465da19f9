"""DLMI (Algorithm 1): Gumbel-Softmax prompt logits with decoupled learnable temperatures,
teacher forcing through the Differentiable LM, Adam on the logits Z and temperatures Phi."""

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
from dlmi.model.dlm import masked_cross_entropy
from dlmi.model.estimators import (
    TEMPERATURE_MODES,
    effective_temperature,
    gumbel_noise,
    gumbel_softmax,
)
from dlmi.model.optim import BatchedAdam
from dlmi.options import opt


@dataclass
class GumbelPromptConfig(MethodConfig):
    """Options of the learnable prompt distribution: logits Z, temperatures Phi, Adam."""

    samples: int = opt(8, 'Gumbel-Softmax samples per step (Table 5 num_samples)', 'Table 5')
    lr: float = opt(0.1, 'Adam learning rate for Z and Phi (Table 5)', 'Table 5')
    tau0: float = opt(100.0, 'initial / fixed temperature (Table 5, DLMI(tau0=100))', 'Table 5')
    tau_eps: float = opt(
        0.01, 'epsilon in tau = eps + tau0 (1 + tanh phi); the paper leaves it open')
    temperature: str = opt(
        "decoupled", 'one learnable tau per position (Section 3.3)', 'Section 3.3')
    init_std: float = opt(1.0, 'Z, Phi ~ N(0, 1) (Algorithm 1 lines 1-2)', 'Algorithm 1')

    def __post_init__(self):
        super().__post_init__()
        _at_least(self, "samples", 1)
        _positive(self, "lr", "tau0", "tau_eps")
        if self.temperature not in TEMPERATURE_MODES:
            raise UsageError(f"temperature must be one of {', '.join(TEMPERATURE_MODES)}, "
                             f"got {self.temperature!r}")


@dataclass
class DLMIConfig(GumbelPromptConfig):
    teacher_forcing: bool = opt(
        True, 'Algorithm 1 line 10; False is the DLMI-TF ablation', 'Algorithm 1')
    output_tau: float = opt(1.0, 'GS temperature of fed-back outputs without teacher forcing')
    straight_through: bool = opt(
        False, 'hard one-hot forward, relaxed backward (Appendix A)', 'Appendix A')
    discretize: str = opt("argmax", 'or "nearest": token nearest to softmax(Z) @ W_E')
    check_samples: bool = opt(True, "also judge the step's hard samples at evaluation points")

    def __post_init__(self):
        super().__post_init__()
        if self.discretize not in ("argmax", "nearest"):
            raise UsageError(f"discretize must be argmax or nearest, got {self.discretize!r}")


@dataclass
class DLMIState:
    Z: torch.Tensor  # (B, N, V) learnable prompt logits
    phi: torch.Tensor | None  # (B, N) decoupled, (B, 1) shared, None when tau is fixed
    optimizer: BatchedAdam


@register
class DLMI(Method[DLMIState]):
    name = "dlmi"
    description = "DLMI: Gumbel-Softmax prompt, decoupled learnable temperatures, teacher forcing"
    config_class = DLMIConfig

    def init_state(self, batch: Batch) -> DLMIState:
        cfg, V, dev = self.config, self.dlm.vocab_size, self.dlm.device
        N = cfg.prompt_length
        Z = per_row(batch.generators, lambda g: torch.randn(N, V, generator=g, device=dev))
        Z = self.seed_logits(Z * cfg.init_std).requires_grad_(True)
        params = [Z]
        phi = None
        if cfg.temperature != "fixed":
            width = N if cfg.temperature == "decoupled" else 1
            phi = per_row(batch.generators, lambda g: torch.randn(width, generator=g, device=dev))
            phi = (phi * cfg.init_std).requires_grad_(True)
            params.append(phi)
        return DLMIState(Z, phi, self.make_optimizer(params))

    def make_optimizer(self, params: list[torch.Tensor]) -> BatchedAdam:
        """Adam over [Z] or [Z, Phi] (Algorithm 1)."""
        return BatchedAdam(params, lr=self.config.lr)

    def temperature(self, state: DLMIState) -> torch.Tensor:
        """(B, N) effective temperature of each prompt position."""
        B, N, _ = state.Z.shape
        if state.phi is None:
            return torch.full((B, N), self.config.tau0, device=state.Z.device)
        tau = effective_temperature(state.phi, self.config.tau0, self.config.tau_eps)
        return tau.expand(B, N)

    def surrogate(self, state: DLMIState, batch: Batch):
        """The sampled loss whose gradient is the Gumbel-Softmax estimate.

        Returns loss (B,) averaged over the step's samples, the temperatures (B, N), the
        hard samples (B, S, N) behind the relaxed ones (argmax of Z + g) and the argmax of the
        first sample's logits (B, M), the paper's LCS input.
        """
        cfg = self.config
        Z = state.Z
        B, N, V = Z.shape
        S = cfg.samples
        noise, tau = self.draw(state, batch)
        p = gumbel_softmax(Z[:, None], tau[:, None, :, None], noise, hard=cfg.straight_through)
        prompt = self.dlm.soft_embed(p.reshape(B * S, N, V))  # (B*S, N, d)
        targets = batch.target_ids.repeat_interleave(S, dim=0)  # (B*S, M)
        mask = batch.mask.repeat_interleave(S, dim=0)
        if cfg.teacher_forcing:
            logits = self.dlm.teacher_forced_logits(prompt, targets, soft_positions=N)
        else:
            gens = [g for g in batch.generators for _ in range(S)]  # row b's samples use row b's
            logits = self.dlm.free_running_logits(
                prompt, targets.shape[1], gens, tau=cfg.output_tau, hard=cfg.straight_through,
                soft_positions=N)
        loss = masked_cross_entropy(logits, targets, mask)
        loss = (loss + self.dlm.fluency_penalty(prompt, p.reshape(B * S, N, V)))
        loss = loss.view(B, S).mean(1)  # (B,)
        with torch.no_grad():
            samples = (Z.detach()[:, None] + noise).argmax(-1)  # (B, S, N)
            train_argmax = logits.detach().view(B, S, -1, logits.shape[-1])[:, 0].argmax(-1)
        return loss, tau, samples, train_argmax

    def draw(self, state: DLMIState, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's Gumbel noise (B, S, N, V), row b's from row b's generator, and the
        temperatures (B, N)."""
        Z = state.Z
        noise = per_row(batch.generators, lambda g: gumbel_noise(
            (self.config.samples, *Z.shape[1:]), g, Z.device, Z.dtype))
        return noise, self.temperature(state)

    def step(self, state: DLMIState, batch: Batch, step: int) -> StepOutput:
        loss, tau, samples, train_argmax = self.surrogate(state, batch)
        state.optimizer.zero_grad()
        # Sum over rows: each row's gradient is its own (rows share no parameters).
        loss.sum().backward()
        state.optimizer.step()
        return StepOutput(
            loss=loss.detach(),
            temperature=tau.detach().mean(1),
            candidates=samples if self.config.check_samples else None,
            train_argmax=train_argmax,
        )

    @torch.no_grad()
    def current_prompts(self, state: DLMIState) -> torch.Tensor:
        Z = state.Z.detach()
        if self.config.discretize == "argmax":
            return Z.argmax(-1)
        E = self.dlm.W_E  # (V, d)
        soft = self.dlm.soft_embed(torch.softmax(Z, -1))  # (B, N, d)
        return torch.cdist(soft, E[None].expand(Z.shape[0], -1, -1)).argmin(-1)

    def keep(self, state: DLMIState, index: torch.Tensor) -> DLMIState:
        params = state.optimizer.keep(index)
        return DLMIState(params[0], params[1] if len(params) > 1 else None, state.optimizer)


# ---- ablations and GBDA: the same machinery with other defaults (Table 1) ----------------------


@dataclass
class DLMINoTFConfig(DLMIConfig):
    teacher_forcing: bool = opt(False, 'DLMI-TF ablation: free-running differentiable rollout')


@register
class DLMINoTF(DLMI):
    name = "dlmi-notf"
    description = "DLMI without teacher forcing (free-running Gumbel-Softmax rollout)"
    config_class = DLMINoTFConfig


@dataclass
class DLMISharedTauConfig(DLMIConfig):
    temperature: str = opt("learnable", 'one learnable temperature per target, not per position')


@register
class DLMISharedTau(DLMI):
    name = "dlmi-shared-tau"
    description = "DLMI with one shared learnable temperature instead of one per position"
    config_class = DLMISharedTauConfig


@dataclass
class GBDAConfig(DLMIConfig):
    temperature: str = opt("fixed", 'GBDA has no learnable temperature (Table 1)')
    tau0: float = opt(1.0, 'the paper runs GBDA(tau=1) and GBDA(tau=100)')
    teacher_forcing: bool = opt(False, 'nor teacher forcing (Table 1)')


@register
class GBDA(DLMI):
    name = "gbda"
    description = "GBDA (Guo et al. 2021) for inversion: Gumbel-Softmax at a fixed temperature"
    config_class = GBDAConfig
