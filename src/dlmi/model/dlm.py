"""The Differentiable Language Model: distributions over tokens in, logits out.

Wraps any decoder-only Hugging Face model that exposes its input embeddings. Shapes:
B prompt rows, K pairs of fixed context per row (1 for inversion), N prompt positions,
M target tokens per pair, V vocabulary, d width, L assembled sequence length.
"""

from __future__ import annotations

import copy
import dataclasses
import logging

import torch
import torch.nn.functional as F

from dlmi.errors import UsageError
from dlmi.model.compute import ComputeCounter, ModelShape
from dlmi.model.context import SpanContext
from dlmi.model.estimators import gumbel_noise, gumbel_softmax
from dlmi.model.kv_cache import cache_of, with_cache
from dlmi.model.models import LoadedModel, contiguous_head_input
from dlmi.model.objective import CROSS_ENTROPY, Objective, target_and_rival
from dlmi.model.roundtrip import mended, round_trips

log = logging.getLogger(__name__)

# Fixed text that starts every sequence (a chat template's header, a long --prefix) and is at
# least this many tokens is run through the model once and kept as a KV cache, instead of
# being recomputed in every forward of every row. Shorter, it is not worth the cache's copy.
PREFIX_CACHE_MIN = 4
# Swap candidates are scored in at least this many forwards (DifferentiableLM.variant_losses):
# each starts at its chunk's earliest change, so more, smaller chunks recompute less.
VARIANT_FORWARDS = 8  # benchmarks/candidate_scoring.py: 1.74x at N = 80 against 1.48x with 4


class DifferentiableLM:
    """context: the fixed tokens around the span (default: `prefix_ids` before it, nothing
    after). With K pairs in the context, a prompt row's target is the K outputs end to end,
    (K * M) tokens, and every forward runs B * K sequences (see dlmi.model.context)."""

    def __init__(self, lm: LoadedModel, prefix_ids: list[int] | None = None,
                 context: SpanContext | None = None,
                 prompt_vocab: torch.Tensor | None = None):
        self.lm = lm
        self.model = lm.model
        contiguous_head_input(self.model)
        full = self.model.get_input_embeddings().weight.detach()  # (V_all, d), frozen
        self.device = full.device
        # The prompt's vocabulary (dlmi.model.vocab): methods see V allowed tokens, indexed
        # 0..V-1, and W_E holds only their rows; global_ids maps prompts back.
        self.prompt_vocab = None if prompt_vocab is None else prompt_vocab.to(self.device)
        self.W_E = full if self.prompt_vocab is None else full[self.prompt_vocab]  # (V, d)
        self.W_E_all = full  # (V_all, d): what the model's own outputs are embedded with
        if context is not None and prefix_ids:
            raise ValueError("give the prefix inside the context, not both")
        self.context = context or SpanContext.single(prefix_ids or [])
        self.eos_id = lm.eos_token_id
        self.shape = ModelShape.of(self.model)
        self.compute = ComputeCounter()
        # Weight of the prompt's own mean NLL under the model (fluency_penalty); 0: off.
        self.fluency = 0.0
        self._layouts: dict[tuple[int, int], tuple] = {}
        # Shared fixed tokens this long or longer are KV-cached (None: never).
        self.prefix_cache_min: int | None = PREFIX_CACHE_MIN
        self._prefix_cache = None  # (ids, cache of batch 1) of the shared prefix
        self._shared = self.context.shared_prefix()  # per context, not per forward
        self._chunk_fits: int | None = None  # largest no-grad chunk known to fit (fit_chunk)
        self._lowered: dict[torch.dtype, DifferentiableLM] = {}  # screens (lowered)

    def lowered(self, dtype: torch.dtype) -> DifferentiableLM:
        """This model in a lower precision, for screening candidates (dlmi.model.screening):
        a copy of the weights in `dtype` with the same context, prompt vocabulary and fluency
        weight, whose passes count in this model's compute. Made once per dtype."""
        low = self._lowered.get(dtype)
        if low is None:
            lm = dataclasses.replace(self.lm, model=copy.deepcopy(self.model).to(dtype))
            low = DifferentiableLM(lm, context=self.context, prompt_vocab=self.prompt_vocab)
            low.compute = self.compute
            low.prefix_cache_min = self.prefix_cache_min
            self._lowered[dtype] = low
        low.fluency = self.fluency  # set by the runner after the model is built
        return low

    @property
    def vocab_size(self) -> int:
        """Tokens a prompt may use (all of the model's unless restricted)."""
        return self.W_E.shape[0]

    def round_trips(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """(..., N) prompts in the prompt vocabulary -> (...) bool: their text, pasted into
        the context (the first pair's), tokenises back to the same ids."""
        ctx = self.context
        return round_trips(self.lm, ctx.before[0], self.global_ids(prompt_ids), ctx.after[0])

    def mend_round_trip(self, prompt_ids: torch.Tensor, ranked: torch.Tensor) -> torch.Tensor:
        """(B, N) prompts -> (B, N), each changed where it breaks the round trip in the
        context (the first pair's) to the first alternative of ranked (B, N, A) that keeps it
        (see dlmi.model.roundtrip.mended); prompts that pass are returned as they are."""
        ctx = self.context
        out = prompt_ids.clone()
        for b in (~self.round_trips(prompt_ids)).nonzero()[:, 0].tolist():
            ids = self.global_ids(prompt_ids[b]).tolist()
            alternatives = self.global_ids(ranked[b]).tolist()
            fixed = mended(self.lm, ctx.before[0], ids, alternatives, ctx.after[0])
            out[b] = self.local_ids(torch.tensor(fixed, device=out.device))
        return out

    def local_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """The model's token ids (...) -> the prompt vocabulary's; a token outside it is an
        error that names it."""
        where, ok = self.allowed_local_ids(ids)
        if not bool(ok.all()):
            token = int(ids[~ok][0])
            raise UsageError(f"token {token} ({self.lm.decode([token])!r}) of the initial prompt "
                             "is outside the allowed vocabulary: change --vocab or the prompt")
        return where

    def allowed_local_ids(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's token ids (...) -> (their prompt-vocabulary ids, whether each is in
        the prompt vocabulary at all); ids outside it map to 0 and False."""
        if self.prompt_vocab is None:
            return ids, torch.ones_like(ids, dtype=torch.bool)
        where = torch.searchsorted(self.prompt_vocab, ids).clamp_max(len(self.prompt_vocab) - 1)
        ok = self.prompt_vocab[where] == ids
        return torch.where(ok, where, 0), ok

    def global_ids(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Prompt ids in the prompt vocabulary (B, N) -> the model's token ids (B, N)."""
        return prompt_ids if self.prompt_vocab is None else self.prompt_vocab[prompt_ids]

    def use_context(self, context: SpanContext) -> None:
        """Switch the fixed context (e.g. to a mini-batch of pairs)."""
        self.context = context
        self._layouts.clear()
        self._shared = context.shared_prefix()

    @property
    def cached_prefix(self) -> int:
        """Tokens at the start of every sequence that come from the prefix KV cache."""
        limit = self.prefix_cache_min
        return self._shared if limit is not None and self._shared >= limit else 0

    def _prefix_kv(self, rows: int):
        """A fresh KV cache of the shared prefix for `rows` sequences (a forward appends to
        the cache it is given, so each forward gets its own copy of the batch-1 one)."""
        S = self.cached_prefix
        ids = self.context.before[0][:S]
        if self._prefix_cache is None or self._prefix_cache[0] != ids:
            with torch.no_grad():
                out = self.model(input_ids=torch.tensor([ids], device=self.device),
                                 use_cache=True, logits_to_keep=1)
            self._count(1, S, 1)
            self._prefix_cache = (ids, cache_of(self.model, out))
        cache = copy.deepcopy(self._prefix_cache[1])
        cache.batch_repeat_interleave(rows)
        return cache

    @property
    def prefix_ids(self) -> torch.Tensor:
        """The fixed ids before the span of the first pair (inversion's prefix)."""
        return torch.tensor(self.context.before[0], dtype=torch.long, device=self.device)

    @property
    def pairs(self) -> int:
        return self.context.pairs

    # ---- embeddings -------------------------------------------------------------------------

    def soft_embed(self, p: torch.Tensor) -> torch.Tensor:
        """p: (B, N, V) distributions (or any weights) -> (B, N, d) = p @ W_E."""
        return p.to(self.W_E.dtype) @ self.W_E

    def hard_embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Model token ids: (B, N) -> (B, N, d)."""
        return self.model.get_input_embeddings()(ids)

    @torch.no_grad()
    def nearest_tokens(self, embeds: torch.Tensor) -> torch.Tensor:
        """The prompt-vocabulary token nearest (cosine) to each embedding: (B, N, d) -> (B, N)."""
        E = F.normalize(self.W_E, dim=-1)  # (V, d)
        return (F.normalize(embeds, dim=-1) @ E.T).argmax(-1)

    def embed_prompt(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Prompt ids in the prompt vocabulary: (B, N) -> (B, N, d)."""
        if self.prompt_vocab is None:
            return self.hard_embed(prompt_ids)
        return F.embedding(prompt_ids, self.W_E)

    def _layout(self, n: int, tail: int):
        """Cached SpanContext.layout for span n and tail tokens, less the S cached prefix
        tokens: embeddings (K, L - S, d), kind (K, L - S), attention mask (K, L) (it covers
        the cached tokens too) and position ids (K, L - S), both None without padding, and
        L - S."""
        key = (n, tail)
        if key not in self._layouts:
            S = self.cached_prefix
            fixed, kind, L = self.context.layout(n, tail, self.device, shared=S)
            padded = bool((kind == 0).any())
            mask = (kind != 0).long() if padded else None  # (K, L)
            positions = (mask.cumsum(1) - 1).clamp_min(0)[:, S:] if padded else None
            self._layouts[key] = (self.hard_embed(fixed[:, S:]), kind[:, S:], mask, positions,
                                  L - S)
        return self._layouts[key]

    def _assemble(self, prompt_embeds: torch.Tensor, tail_embeds: torch.Tensor | None):
        """Every pair's sequence [pad, before, prompt, after, tail], padded to length L, less
        its first S tokens when they come from the prefix cache (then the padding follows them).

        prompt_embeds: (B, N, d); tail_embeds: (B * K, T, d) or None -> embeds
        (B * K, L - S, d), attention mask (B * K, L) and position ids (B * K, L - S), both
        None without padding.
        """
        B, N, d = prompt_embeds.shape
        K = self.pairs
        T = 0 if tail_embeds is None else tail_embeds.shape[1]
        fixed, kind, mask, positions, L = self._layout(N, T)
        seqs = []
        for k in range(K):  # K pieces per pair: cat keeps the prompt's gradient path simple
            span = L - T - len(self.context.after[k]) - N
            pieces = [fixed[k, :span].expand(B, -1, -1), prompt_embeds,
                      fixed[k, span + N: L - T].expand(B, -1, -1)]
            if tail_embeds is not None:
                pieces.append(tail_embeds.view(B, K, T, d)[:, k])
            seqs.append(torch.cat(pieces, dim=1))  # (B, L, d)
        embeds = torch.stack(seqs, 1).view(B * K, L, d) if K > 1 else seqs[0]
        if mask is None:
            return embeds, None, None
        return embeds, mask.repeat(B, 1), positions.repeat(B, 1)

    def _run(self, embeds, mask, positions, **kwargs):
        """The model on assembled sequences (after the cached prefix, which is added here
        unless a cache that already holds it is passed)."""
        extra = {} if mask is None else {"attention_mask": mask, "position_ids": positions}
        if self.cached_prefix:
            given = kwargs.pop("cache", None)
            if given is None:
                given = kwargs.pop("past_key_values", None)
            kwargs.update(use_cache=True, **with_cache(
                self.model, given if given is not None else self._prefix_kv(embeds.shape[0])))
        return self.model(inputs_embeds=embeds, **extra, **kwargs)

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

    def _split(self, target_ids: torch.Tensor) -> torch.Tensor:
        """(B, K * M) -> (B * K, M): one row per pair."""
        B, KM = target_ids.shape
        return target_ids.reshape(B * self.pairs, KM // self.pairs)

    # ---- differentiable forwards --------------------------------------------------------------

    def teacher_forced_logits(
        self, prompt_embeds: torch.Tensor, target_ids: torch.Tensor, soft_positions: int = 0,
        backward: bool = True,
    ) -> torch.Tensor:
        """Logits predicting each target token given the prompt and the true previous tokens.

        prompt_embeds: (B, N, d); target_ids: (B, K * M) -> logits (B, K * M, V).
        soft_positions: N when the prompt came from soft_embed (counted in FLOPs).
        """
        B = prompt_embeds.shape[0]
        targets = self._split(target_ids)  # (B * K, M)
        M = targets.shape[1]
        embeds, mask, positions = self._assemble(prompt_embeds,
                                                 self.hard_embed(targets[:, :-1]))
        # The soft product p @ W_E runs once per row, not once per pair.
        self._count(embeds.shape[0], embeds.shape[1], M, soft_positions / self.pairs,
                    cached=self.cached_prefix, backward=backward)
        # logits_to_keep skips the vocabulary projection on every other position: on prompt
        # positions it would be wasted work (V * d per position).
        logits = self._run(embeds, mask, positions, use_cache=False, logits_to_keep=M).logits
        return logits[:, -M:].reshape(B, -1, logits.shape[-1])

    def free_running_logits(
        self, prompt_embeds: torch.Tensor, M: int, generators: list[torch.Generator],
        tau: float = 1.0, hard: bool = False, soft_positions: int = 0,
    ) -> torch.Tensor:
        """Autoregressive rollout without teacher forcing, differentiable end to end.

        Each next token is a Gumbel-Softmax sample (temperature tau) of the model's own logits,
        fed back through the soft embedding. prompt_embeds: (B, N, d); M: target tokens of a
        row (K * per-pair length) -> logits (B, M, V).
        generators: one per sequence, so each sequence's rollout noise is its own.
        """
        B, K = prompt_embeds.shape[0], self.pairs
        embeds, mask, positions = self._assemble(prompt_embeds, None)  # (B * K, L, d)
        past = None
        cached = self.cached_prefix
        steps = []
        for _ in range(M // K):
            # Position ids of the tokens fed in this call only: the cache holds the rest.
            out = self._run(embeds, mask, None if positions is None
                            else positions[:, -embeds.shape[1]:], use_cache=True,
                            logits_to_keep=1, **with_cache(self.model, past))
            self._count(B * K, embeds.shape[1], 1,
                        soft_positions / K if past is None else 1, cached, backward=True)
            cached += embeds.shape[1]
            past = cache_of(self.model, out)
            logits = out.logits[:, -1]  # (B * K, V)
            steps.append(logits)
            noise = torch.stack([gumbel_noise(logits.shape[1:], g, logits.device, logits.dtype)
                                 for g in generators for _ in range(K)])  # (B * K, V)
            sample = gumbel_softmax(logits, tau, noise, hard=hard)  # (B * K, V)
            # The model's output distribution spans the whole vocabulary, not the prompt's.
            embeds = sample[:, None].to(self.W_E_all.dtype) @ self.W_E_all  # (B * K, 1, d)
            if mask is not None:
                mask, positions = _one_more(mask, positions)
        return torch.stack(steps, dim=1).reshape(B, M, -1)

    def prompt_log_probs(self, prompt_embeds: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The model's log-probabilities for each prompt token it can predict, given the first
        pair's fixed text and the prompt before it: prompt_embeds (B, N, d) -> (log-probs
        (B, N - first, V) over the prompt vocabulary, first), where entry i predicts prompt
        position first + i; first is 0 after fixed text, else 1 (nothing predicts the first
        token). Differentiable when prompt_embeds is."""
        B, N, _ = prompt_embeds.shape
        before = self.context.before[0]
        pieces = [prompt_embeds]
        if before:
            fixed = torch.tensor(before, dtype=torch.long, device=self.device)
            pieces.insert(0, self.hard_embed(fixed)[None].expand(B, -1, -1))
        embeds = torch.cat(pieces, 1)
        first = 0 if before else 1
        P = N - first
        self._count(B, embeds.shape[1], P, backward=prompt_embeds.requires_grad)
        logits = self.model(inputs_embeds=embeds, use_cache=False, logits_to_keep=P + 1).logits
        logp = logits[:, -P - 1:-1].float().log_softmax(-1)  # (B, P, V_all)
        if self.prompt_vocab is not None:
            logp = logp[..., self.prompt_vocab]
        return logp, first

    def fluency_penalty(self, prompt_embeds: torch.Tensor, prompt_dist: torch.Tensor | None
                        ) -> torch.Tensor:
        """fluency x the prompt's mean negative log-likelihood under the model, per row (B,):
        position i's prediction scored against the prompt's distribution at i + 1 (cross-
        entropy; one-hot for hard prompts), after the first pair's fixed text. Zeros when
        fluency is 0 (no forward). prompt_embeds (B, N, d); prompt_dist (B, N, V) over the
        prompt vocabulary."""
        B, N, _ = prompt_embeds.shape
        if not self.fluency or prompt_dist is None or N < 2:
            return torch.zeros(B, device=self.device)
        logp, _ = self.prompt_log_probs(prompt_embeds)
        logp = logp[:, -(N - 1):]  # (B, N - 1, V) predicts positions 1..N-1
        nll = -(prompt_dist[:, 1:].float() * logp).sum(-1).mean(-1)  # (B,)
        return self.fluency * nll

    # ---- judges on hard ids ----------------------------------------------------------------------

    @torch.no_grad()
    def greedy_decode(self, prompt_ids: torch.Tensor | None, M: int, model_ids: bool = False,
                      prompt_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy continuation of M tokens per row (M / K per pair).
        prompt_ids: (B, N) in the prompt vocabulary, or the model's ids (model_ids=True);
        or prompt_embeds (B, N, d), a soft prompt -> (B, M).

        After an end-of-sequence token the rest is EoS, the same convention as the padding of
        targets (Algorithm 2), so outputs and targets compare position by position; so is
        every position past a pair's output length (context.output_lengths).
        """
        return self._greedy(prompt_ids, M, model_ids, prompt_embeds)[0]

    @torch.no_grad()
    def greedy_margins(self, prompt_ids: torch.Tensor, target_ids: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """greedy_decode of prompt_ids (B, N) plus, at every decoded position, the target
        token's logit, the best other token's logit and the logsumexp, read off the logits
        the decode ran on: free-running, so up to the first miss they are the teacher-forced
        ones, and after it they follow the model's own output. target_ids (B, M) ->
        outputs (B, M) and three (B, M) float tensors. The same tokens as a teacher-forced
        pass, so the same FLOPs."""
        return self._greedy(prompt_ids, target_ids.shape[1], target_ids=target_ids)

    def _greedy(self, prompt_ids, M, model_ids=False, prompt_embeds=None, target_ids=None):
        """greedy_decode, and with target_ids (B, M) greedy_margins' three readings."""
        if prompt_embeds is not None:
            prompt = prompt_embeds
        else:
            prompt = self.hard_embed(prompt_ids) if model_ids else self.embed_prompt(prompt_ids)
        B, K = prompt.shape[0], self.pairs
        embeds, mask, positions = self._assemble(prompt, None)
        out = self._run(embeds, mask, positions, use_cache=True, logits_to_keep=1)
        self._count(B * K, embeds.shape[1], 1, cached=self.cached_prefix)
        cached = self.cached_prefix + embeds.shape[1]
        finished = torch.zeros(B * K, dtype=torch.bool, device=self.device)
        tokens, readings = [], []
        wanted = None if target_ids is None else target_ids.reshape(B * K, M // K)
        for m in range(M // K):
            if wanted is not None:  # (B * K, 1, V) logits against the target's m-th token
                last = out.logits[:, -1:]
                readings.append((*target_and_rival(last, wanted[:, m:m + 1]),
                                 last.float().logsumexp(-1)))
            nxt = out.logits[:, -1].argmax(-1)  # (B * K,)
            if self.eos_id is not None:
                nxt = torch.where(finished, torch.full_like(nxt, self.eos_id), nxt)
                finished |= nxt == self.eos_id
            tokens.append(nxt)
            if m + 1 < M // K:
                if mask is not None:
                    mask, positions = _one_more(mask, positions)
                extra = {} if mask is None else {"attention_mask": mask,
                                                 "position_ids": positions[:, -1:]}
                out = self.model(input_ids=nxt[:, None], use_cache=True, logits_to_keep=1,
                                 **extra, **with_cache(self.model, cache_of(self.model, out)))
                self._count(B * K, 1, 1, cached=cached)
                cached += 1
        outputs = self._pad_past_outputs(torch.stack(tokens, dim=1)).reshape(B, M)
        if wanted is None:
            return outputs, None, None, None
        return (outputs, *(torch.cat(r, 1).reshape(B, M) for r in zip(*readings, strict=True)))

    def _pad_past_outputs(self, outputs: torch.Tensor) -> torch.Tensor:
        """outputs (B * K, M): positions past each pair's output length become EoS."""
        lengths = self.context.output_lengths
        if lengths is None or self.eos_id is None:
            return outputs
        limit = torch.tensor(lengths, device=outputs.device).repeat(outputs.shape[0] // self.pairs)
        past = torch.arange(outputs.shape[1], device=outputs.device)[None] >= limit[:, None]
        return outputs.masked_fill(past, self.eos_id)

    @torch.no_grad()
    def teacher_forced_hits(self, prompt_ids: torch.Tensor,
                            target_ids: torch.Tensor) -> torch.Tensor:
        """One pass: does the argmax at each target position equal the target token?

        prompt_ids: (B, N); target_ids: (B, M) -> bool (B, M). Greedy decoding reproduces the
        target exactly iff every scored position hits (induction over positions).
        """
        logits = self.teacher_forced_logits(self.embed_prompt(prompt_ids), target_ids,
                                            backward=False)
        return logits.argmax(-1) == target_ids

    @torch.no_grad()
    def hard_losses(self, prompt_ids: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor,
                    chunk: int = 64, objective: Objective = CROSS_ENTROPY
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced loss and exact-match proof of hard prompts, no gradient, in chunks.

        prompt_ids: (R, N); target_ids, mask: (R, M) -> loss (R,), exact (R,) bool. `exact`
        means every scored position's argmax is the target token, which is what greedy
        decoding needs (see teacher_forced_hits). `chunk` rows per forward bounds memory;
        `objective`: the loss (objective.Objective). A chunk too large for the device's
        memory is halved until it fits (fit_chunk).
        """
        return self.fit_chunk(lambda c: self._hard_losses(prompt_ids, target_ids, mask, c,
                                                          objective),
                              chunk)

    def _hard_losses(self, prompt_ids, target_ids, mask, chunk, objective):
        losses, exact = [], []
        for i in range(0, prompt_ids.shape[0], chunk):
            sl = slice(i, i + chunk)
            logits = self.teacher_forced_logits(self.embed_prompt(prompt_ids[sl]),
                                                target_ids[sl], backward=False)  # (r, M, V)
            loss, proof = objective.loss_and_exact(logits, target_ids[sl], mask[sl])
            if self.fluency:
                ids = prompt_ids[sl]
                one_hot = F.one_hot(ids, self.vocab_size).to(self.W_E.dtype)
                loss = loss + self.fluency_penalty(self.embed_prompt(ids), one_hot)
            losses.append(loss)
            exact.append(proof)
        return torch.cat(losses), torch.cat(exact)

    @torch.no_grad()
    def variant_losses(self, base_ids: torch.Tensor, cand_ids: torch.Tensor, rows: torch.Tensor,
                       target_ids: torch.Tensor, mask: torch.Tensor, chunk: int = 64,
                       objective: Objective = CROSS_ENTROPY,
                       min_forwards: int = VARIANT_FORWARDS) -> tuple[torch.Tensor, torch.Tensor]:
        """hard_losses of candidates that are variants of one base prompt per row (GCG's and
        dlmi-search's swaps), without recomputing what a candidate shares with its base.

        The base prompts run once with a KV cache; a candidate whose first change is at
        position p reads the cache up to p and runs only its tokens from p on, then the
        target. Candidates are sorted by p and each chunk is cut at its earliest change; at
        least `min_forwards` chunks (of 16 rows or more), since smaller chunks skip more.
        base_ids (B, N); cand_ids (R, N), each a variant of base_ids[rows] (rows (R,));
        target_ids, mask (B, M) -> loss (R,), exact (R,), as hard_losses gives them (float
        tolerance). With pairs of context or the fluency term it is hard_losses itself.
        A chunk too large for the device's memory is halved until it fits (fit_chunk).
        """
        if self.pairs > 1 or self.fluency:
            return self.hard_losses(cand_ids, target_ids[rows], mask[rows], chunk, objective)
        return self.fit_chunk(lambda c: self._variant_losses(
            base_ids, cand_ids, rows, target_ids, mask, c, objective, min_forwards), chunk)

    def fit_chunk(self, run, chunk: int):
        """run(chunk), halving chunk after an out-of-memory error until it fits (GPU; as
        accelerate's find_executable_batch_size), and starting later calls from the size
        that fitted. A CPU that runs out of memory kills the process instead."""
        chunk = min(chunk, self._chunk_fits or chunk)
        while True:
            try:
                return run(chunk)
            except torch.OutOfMemoryError:
                if chunk == 1:
                    raise
                chunk //= 2
                self._chunk_fits = chunk
                log.warning("out of memory: scoring in chunks of %d prompts", chunk)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def _variant_losses(self, base_ids, cand_ids, rows, target_ids, mask, chunk, objective,
                        min_forwards):
        B, N = base_ids.shape
        R = cand_ids.shape[0]
        S = len(self.context.before[0])  # fixed tokens before the span
        after = torch.tensor(self.context.after[0], dtype=torch.long, device=self.device)
        base_embeds, _, _ = self._assemble(self.embed_prompt(base_ids), None)
        out = self._run(base_embeds, None, None, use_cache=True, logits_to_keep=1)
        self._count(B, base_embeds.shape[1], 1, cached=self.cached_prefix)
        base_cache = cache_of(self.model, out)  # S + N + len(after) positions per row
        # First changed position; at most N - 1 so that the last prompt token, which predicts
        # the first target token when nothing follows the span, is always recomputed.
        changed = cand_ids != base_ids[rows]  # (R, N)
        first = torch.where(changed.any(-1), changed.int().argmax(-1), N).clamp_max(N - 1)
        order = first.argsort(stable=True)  # (R,) candidates by first change
        P = base_cache.get_seq_length()
        losses = torch.empty(R, device=self.device)
        exact = torch.empty(R, dtype=torch.bool, device=self.device)
        per = min(chunk, max(16, -(-R // min_forwards)))
        for i in range(0, R, per):
            idx = order[i:i + per]  # (r,)
            r, b = len(idx), rows[idx]
            start = int(first[idx].min())  # every row of the chunk reruns from here
            targets = target_ids[b]  # (r, M)
            M = targets.shape[1]
            embeds = torch.cat([self.embed_prompt(cand_ids[idx, start:]),
                                self.hard_embed(after).expand(r, -1, -1),
                                self.hard_embed(targets[:, :-1])], 1)  # (r, T, d)
            cache = None  # nothing shared when the change is at the sequence's first token
            if S + start:
                cache = copy.deepcopy(base_cache)
                cache.crop(S + start - P)  # negative: drop the cache's last positions
                cache.batch_select_indices(b)
            self._count(r, embeds.shape[1], M, cached=S + start)
            logits = self.model(inputs_embeds=embeds, use_cache=True, logits_to_keep=M,
                                **with_cache(self.model, cache)).logits  # (r, M, V)
            loss, proof = objective.loss_and_exact(logits, targets, mask[b])
            losses[idx], exact[idx] = loss.float(), proof
        return losses, exact

    def target_mask(self, target_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Which target positions are scored: inside the row's length, up to its first EoS,
        and, with K pairs, inside each pair's output length (context.output_lengths).

        target_ids: (B, K * M); lengths: (B,) -> bool (B, K * M). Positions after the first EoS
        are EoS padding that greedy decoding reproduces by convention, so they carry no signal.
        """
        B, KM = target_ids.shape
        K = self.pairs
        pairs = self._split(target_ids)  # (B * K, M)
        M = pairs.shape[1]
        pos = torch.arange(M, device=target_ids.device)[None]
        if K == 1:
            limit = lengths
        else:
            out = self.context.output_lengths or (M,) * K
            limit = torch.tensor(out, device=target_ids.device).repeat(B)
        mask = pos < limit[:, None]
        if self.eos_id is not None:
            is_eos = (pairs == self.eos_id) & mask
            first = torch.where(is_eos.any(1), is_eos.float().argmax(1), limit)
            mask &= pos <= first[:, None]
        return mask.reshape(B, KM)


def _one_more(mask: torch.Tensor, positions: torch.Tensor):
    """Attention mask and position ids (R, L) grown by one real token: (R, L + 1)."""
    ones = torch.ones_like(mask[:, :1])
    return torch.cat([mask, ones], 1), torch.cat([positions, positions[:, -1:] + 1], 1)
