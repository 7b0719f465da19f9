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
from dlmi.model.estimators import (
    TEMPERATURE_MODES,
    effective_temperature,
    sample_gumbel_softmax,
)
from dlmi.model.objective import masked_cross_entropy
from dlmi.model.optim import BatchedAdam
from dlmi.options import opt

# Tokens per forward/backward pass of a step on CPU (pass_tokens = 0). At N = 80 the 8
# samples run in 2 passes: the step's added memory went from 916 to 555 MB and its time stayed
# within noise of one pass (README, "Benchmarks"; benchmarks/step_memory.py).
PASS_TOKENS_CPU = 512


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
    # The model's activations dominate a step's memory; passes bound them (same gradient).
    pass_tokens: int = opt(
        0, "tokens per forward/backward pass of a step's B x S samples, which run in as many "
        f"passes as needed; 0: {PASS_TOKENS_CPU} on CPU, all at once on a GPU", "measured")

    def __post_init__(self):
        super().__post_init__()
        _at_least(self, "samples", 1)
        _at_least(self, "pass_tokens", 0)
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

    def surrogate(self, state: DLMIState, batch: Batch, backward: bool = False):
        """The sampled loss whose gradient is the Gumbel-Softmax estimate.

        Returns loss (B,) averaged over the step's samples, the temperatures (B, N), the
        hard samples (B, S, N) behind the relaxed ones (argmax of Z + g) and the argmax of the
        first sample's logits (B, M), the paper's LCS input. backward: also backpropagate
        the loss summed over rows into Z and Phi, the model running the B * S samples in
        passes of at most pass_tokens tokens (the loss is then returned detached).
        """
        cfg = self.config
        B, N, _ = state.Z.shape
        S = cfg.samples
        prompt, p, samples, tau = self.sample_prompts(state, batch, cfg.straight_through)
        targets = batch.target_ids.repeat_interleave(S, dim=0)  # (B*S, M)
        mask = batch.mask.repeat_interleave(S, dim=0)
        gens = [g for g in batch.generators for _ in range(S)]  # row b's samples use row b's

        def rows_loss(rows_prompt, rows: slice):  # (r, N, d) -> loss (r,), logits (r, M, V)
            if cfg.teacher_forcing:
                logits = self.dlm.teacher_forced_logits(rows_prompt, targets[rows],
                                                        soft_positions=N)
            else:
                logits = self.dlm.free_running_logits(
                    rows_prompt, targets.shape[1], gens[rows], tau=cfg.output_tau,
                    hard=cfg.straight_through, soft_positions=N)
            loss = masked_cross_entropy(logits, targets[rows], mask[rows])
            return loss + self.dlm.fluency_penalty(
                rows_prompt, None if p is None else p[rows]), logits

        if not backward:
            loss, logits = rows_loss(prompt, slice(None))
            with torch.no_grad():
                train_argmax = logits.detach()[::S].argmax(-1)
            return loss.view(B, S).mean(1), tau, samples, train_argmax
        # The fluency penalty scores p itself, and a free-running rollout draws its noise
        # sequence by sequence from shared generators: both need all rows in one pass.
        split = p is None and cfg.teacher_forcing
        loss, argmax = self._backward_in_passes(prompt, rows_loss, targets.shape[1], split)
        return loss.view(B, S).mean(1), tau, samples, argmax[::S]

    def _backward_in_passes(self, prompt: torch.Tensor, rows_loss, M: int, split: bool
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        """Backpropagate sum over rows of (mean over samples of) rows_loss into Z and Phi.

        The model's activations are the step's largest memory (about 0.6 GB for 8 samples at
        N = 80), so the R = B * S rows run through the model in equal passes of at most
        pass_tokens tokens, each pass's backward ending at a detached copy of the prompt
        embeddings; the sampler's backward then runs once. Same gradient as one pass.
        split: False runs all rows in one pass. prompt: (R, N, d). Returns the loss (R,) and
        the argmax of the logits (R, M).
        """
        R, N, _ = prompt.shape
        S = self.config.samples
        budget = self.config.pass_tokens or (PASS_TOKENS_CPU if prompt.device.type == "cpu"
                                             else None)
        per = R if budget is None or not split else max(1, budget // (N + M))
        passes = -(-R // per)
        per = -(-R // passes)  # equal passes, not a short last one
        leaf = prompt.detach().requires_grad_(True) if passes > 1 else prompt
        losses, argmax = [], []
        for start in range(0, R, per):
            rows = slice(start, min(start + per, R))
            loss, logits = rows_loss(leaf[rows], rows)
            (loss.sum() / S).backward()
            losses.append(loss.detach())
            argmax.append(logits.detach().argmax(-1))
        if passes > 1:
            prompt.backward(leaf.grad)
        return torch.cat(losses), torch.cat(argmax)

    def sample_prompts(self, state: DLMIState, batch: Batch, hard: bool,
                       anchor: torch.Tensor | None = None):
        """The step's S Gumbel-Softmax samples of every row's Z (row b's noise from row b's
        generator), embedded: prompt (B * S, N, d), the distributions p (B * S, N, V) or None,
        the hard samples (B, S, N) and the temperatures (B, N). p exists only for the fluency
        penalty, which scores it; otherwise the embeddings come straight from the fused
        sampler, which keeps no V-sized gradient."""
        Z, S = state.Z, self.config.samples
        B, N, V = Z.shape
        tau = self.temperature(state)  # (B, N)
        gens = batch.generators
        if self.dlm.fluency:
            p, samples = sample_gumbel_softmax(Z, tau, gens, S, hard, anchor)
            p = p.reshape(B * S, N, V)
            return self.dlm.soft_embed(p), p, samples, tau
        prompt, samples = sample_gumbel_softmax(Z, tau, gens, S, hard, anchor, self.dlm.W_E)
        return prompt.reshape(B * S, N, -1), None, samples, tau

    def step(self, state: DLMIState, batch: Batch, step: int) -> StepOutput:
        state.optimizer.zero_grad()
        # Sum over rows: each row's gradient is its own (rows share no parameters).
        loss, tau, samples, train_argmax = self.surrogate(state, batch, backward=True)
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
