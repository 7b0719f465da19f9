"""The Differentiable Language Model: distributions over tokens in, logits out.

Wraps any decoder-only Hugging Face model that exposes its input embeddings. Shapes:
B sequences, P fixed prefix tokens, N prompt positions, M target tokens, V vocabulary, d width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlmi.model.compute import ComputeCounter, ModelShape
from dlmi.model.estimators import gumbel_noise, gumbel_softmax
from dlmi.model.kv_cache import cache_of, with_cache
from dlmi.model.models import LoadedModel


class DifferentiableLM:
    def __init__(self, lm: LoadedModel, prefix_ids: list[int] | None = None):
        self.lm = lm
        self.model = lm.model
        self.W_E = self.model.get_input_embeddings().weight  # (V, d), frozen
        self.device = self.W_E.device
        self.prefix_ids = torch.tensor(prefix_ids or [], dtype=torch.long, device=self.device)
        self.eos_id = lm.eos_token_id
        self.shape = ModelShape.of(self.model)
        self.compute = ComputeCounter()

    @property
    def vocab_size(self) -> int:
        return self.W_E.shape[0]

    @property
    def prefix_len(self) -> int:
        return self.prefix_ids.numel()

    # ---- embeddings -------------------------------------------------------------------------

    def soft_embed(self, p: torch.Tensor) -> torch.Tensor:
        """p: (B, N, V) distributions (or any weights) -> (B, N, d) = p @ W_E."""
        return p.to(self.W_E.dtype) @ self.W_E

    def hard_embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, N) -> (B, N, d)."""
        return self.model.get_input_embeddings()(ids)

    def _with_prefix(self, embeds: torch.Tensor) -> torch.Tensor:
        """embeds: (B, N, d) -> (B, P + N, d)."""
        if self.prefix_len == 0:
            return embeds
        prefix = self.hard_embed(self.prefix_ids)[None].expand(embeds.shape[0], -1, -1)
        return torch.cat([prefix, embeds], dim=1)

    def _count(self, batch: int, seq_len: int, logit_positions: int, soft: int = 0,
               cached: int = 0, backward: bool = False) -> None:
        flops = self.shape.forward_flops(batch, seq_len, logit_positions, soft, cached)
        c = self.compute
        c.forward_passes += batch
        c.tokens += batch * seq_len
        c.flops += flops
        if backward:
            c.backward_passes += batch
            c.tokens += batch * seq_len
            c.flops += flops

    def _logits_of_last(self, embeds: torch.Tensor, k: int) -> torch.Tensor:
        """embeds: (B, T, d) -> logits (B, k, V) of the last k positions only.

        logits_to_keep skips the vocabulary projection on every other position: on prompt
        positions it would be wasted work (V * d per position).
        """
        out = self.model(inputs_embeds=embeds, use_cache=False, logits_to_keep=k)
        return out.logits[:, -k:]

    # ---- differentiable forwards --------------------------------------------------------------

    def teacher_forced_logits(
        self, prompt_embeds: torch.Tensor, target_ids: torch.Tensor, soft_positions: int = 0,
        backward: bool = True,
    ) -> torch.Tensor:
        """Logits predicting each target token given the prompt and the true previous tokens.

        prompt_embeds: (B, N, d); target_ids: (B, M) -> logits (B, M, V).
        soft_positions: N when the prompt came from soft_embed (counted in FLOPs).
        """
        M = target_ids.shape[1]
        inputs = torch.cat([prompt_embeds, self.hard_embed(target_ids[:, :-1])], dim=1)
        inputs = self._with_prefix(inputs)  # (B, P + N + M - 1, d)
        self._count(inputs.shape[0], inputs.shape[1], M, soft_positions, backward=backward)
        return self._logits_of_last(inputs, M)

    def free_running_logits(
        self, prompt_embeds: torch.Tensor, M: int, generators: list[torch.Generator],
        tau: float = 1.0, hard: bool = False, soft_positions: int = 0,
    ) -> torch.Tensor:
        """Autoregressive rollout without teacher forcing, differentiable end to end.

        Each next token is a Gumbel-Softmax sample (temperature tau) of the model's own logits,
        fed back through the soft embedding. prompt_embeds: (B, N, d) -> logits (B, M, V).
        generators: one per sequence, so each sequence's rollout noise is its own.
        """
        embeds = self._with_prefix(prompt_embeds)  # (B, P + N, d)
        B = embeds.shape[0]
        past = None
        cached = 0
        steps = []
        for _ in range(M):
            out = self.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1,
                             **with_cache(self.model, past))
            self._count(B, embeds.shape[1], 1, soft_positions if past is None else 1, cached,
                        backward=True)
            cached += embeds.shape[1]
            past = cache_of(self.model, out)
            logits = out.logits[:, -1]  # (B, V)
            steps.append(logits)
            noise = torch.stack([gumbel_noise(logits.shape[1:], g, logits.device, logits.dtype)
                                 for g in generators])  # (B, V)
            sample = gumbel_softmax(logits, tau, noise, hard=hard)  # (B, V)
            embeds = self.soft_embed(sample[:, None])  # (B, 1, d)
        return torch.stack(steps, dim=1)

    # ---- judges on hard ids ----------------------------------------------------------------------

    @torch.no_grad()
    def greedy_decode(self, prompt_ids: torch.Tensor, M: int) -> torch.Tensor:
        """Greedy continuation of M tokens. prompt_ids: (B, N) -> (B, M).

        After an end-of-sequence token the rest is EoS, the same convention as the padding of
        targets (Algorithm 2), so outputs and targets compare position by position.
        """
        ids = torch.cat([self.prefix_ids[None].expand(prompt_ids.shape[0], -1), prompt_ids], 1)
        B = ids.shape[0]
        out = self.model(input_ids=ids, use_cache=True, logits_to_keep=1)
        self._count(B, ids.shape[1], 1)
        cached = ids.shape[1]
        finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
        tokens = []
        for m in range(M):
            nxt = out.logits[:, -1].argmax(-1)  # (B,)
            if self.eos_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, self.eos_id), nxt)
                finished |= nxt == self.eos_id
            tokens.append(nxt)
            if m + 1 < M:
                out = self.model(input_ids=nxt[:, None], use_cache=True, logits_to_keep=1,
                                 **with_cache(self.model, cache_of(self.model, out)))
                self._count(B, 1, 1, cached=cached)
                cached += 1
        return torch.stack(tokens, dim=1)

    @torch.no_grad()
    def teacher_forced_hits(self, prompt_ids: torch.Tensor,
                            target_ids: torch.Tensor) -> torch.Tensor:
        """One pass: does the argmax at each target position equal the target token?

        prompt_ids: (B, N); target_ids: (B, M) -> bool (B, M). Greedy decoding reproduces the
        target exactly iff every scored position hits (induction over positions).
        """
        logits = self.teacher_forced_logits(self.hard_embed(prompt_ids), target_ids,
                                            backward=False)
        return logits.argmax(-1) == target_ids

    @torch.no_grad()
    def hard_losses(self, prompt_ids: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor,
                    chunk: int = 64, objective: str = "ce", margin: float = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced loss and exact-match proof of hard prompts, no gradient, in chunks.

        prompt_ids: (R, N); target_ids, mask: (R, M) -> loss (R,), exact (R,) bool. `exact`
        means every scored position's argmax is the target token, which is what greedy
        decoding needs (see teacher_forced_hits). `chunk` rows per forward bounds memory;
        objective, margin: as in target_loss.
        """
        losses, exact = [], []
        for i in range(0, prompt_ids.shape[0], chunk):
            sl = slice(i, i + chunk)
            logits = self.teacher_forced_logits(self.hard_embed(prompt_ids[sl]), target_ids[sl],
                                                backward=False)  # (r, M, V)
            losses.append(target_loss(logits, target_ids[sl], mask[sl], objective, margin))
            exact.append(((logits.argmax(-1) == target_ids[sl]) | ~mask[sl]).all(1))
        return torch.cat(losses), torch.cat(exact)

    def target_mask(self, target_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Which target positions are scored: inside the row's length, up to its first EoS.

        target_ids: (B, M); lengths: (B,) -> bool (B, M). Positions after the first EoS are
        EoS padding that greedy decoding reproduces by convention, so they carry no signal.
        """
        M = target_ids.shape[1]
        pos = torch.arange(M, device=target_ids.device)[None]
        mask = pos < lengths[:, None]
        if self.eos_id is not None:
            is_eos = (target_ids == self.eos_id) & mask
            first = torch.where(is_eos.any(1), is_eos.float().argmax(1), lengths)
            mask &= pos <= first[:, None]
        return mask


def masked_cross_entropy(logits: torch.Tensor, target_ids: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over scored positions, per row. logits (B, M, V) -> (B,)."""
    B, M, V = logits.shape
    # Flattened rows, not logits.transpose(1, 2): the transpose would copy logits and gradient.
    ce = F.cross_entropy(logits.reshape(B * M, V).float(), target_ids.reshape(B * M),
                         reduction="none").view(B, M)
    mask = mask.to(ce.dtype)
    return (ce * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def masked_margin_loss(logits: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor,
                       margin: float = 1.0) -> torch.Tensor:
    """Mean over scored positions of max(-margin, best other logit - target logit), per row
    (the Carlini-Wagner loss, as Faster-GCG uses it). logits (B, M, V) -> (B,).

    Negative exactly where the target token is the argmax, so it ranks prompts by the positions
    greedy decoding misses; a position won by `margin` earns nothing more."""
    logits = logits.float()
    target = logits.gather(-1, target_ids[..., None])[..., 0]  # (B, M)
    other = logits.scatter(-1, target_ids[..., None], float("-inf")).amax(-1)  # (B, M)
    per_position = (other - target).clamp_min(-margin)
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum(1) / mask.sum(1).clamp_min(1.0)


OBJECTIVES = ("ce", "cw")


def target_loss(logits: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor,
                objective: str = "ce", margin: float = 1.0) -> torch.Tensor:
    """The per-row loss a search minimises: "ce" cross-entropy, "cw" the margin loss."""
    if objective == "cw":
        return masked_margin_loss(logits, target_ids, mask, margin)
    return masked_cross_entropy(logits, target_ids, mask)
