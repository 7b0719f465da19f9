"""Difficulty-driven target generation (the paper's Algorithm 2).

From the start tokens (the model's BoS by default), at each step the next-token distribution is
sorted, a rank k' ~ N(k, sigma^2) is drawn, rounded and clipped to [1, |V|], and the token of
rank k' is appended. On EoS the target is padded with EoS to its length. k = 1 gives fluent,
low-perplexity targets; larger k gives harder ones. Token ids are the source of truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dlmi.errors import UsageError
from dlmi.model.kv_cache import cache_of, with_cache
from dlmi.model.models import LoadedModel


def row_seed(seed: int, k: int, index: int) -> int:
    """Each target has its own seed, so one target can be regenerated alone."""
    return (seed * 1_000_003 + k * 10_007 + index) % (2**63)


@torch.no_grad()
def generate_target(lm: LoadedModel, k: int, length: int, sigma: float, seed: int,
                    start_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """One target of `length` tokens at difficulty k. Returns (target ids, ranks used)."""
    gen = torch.Generator().manual_seed(seed)
    V, eos = lm.vocab_size, lm.eos_token_id
    ids = torch.tensor([list(start_ids)], device=lm.device)
    out = lm.model(input_ids=ids, use_cache=True, logits_to_keep=1)
    tokens: list[int] = []
    ranks: list[int] = []
    while len(tokens) < length:
        order = torch.sort(out.logits[0, -1].float(), descending=True, stable=True).indices
        drawn = k + sigma * torch.randn((), generator=gen).item() if sigma > 0 else k
        rank = int(min(max(round(drawn), 1), V))
        token = int(order[rank - 1])
        tokens.append(token)
        ranks.append(rank)
        if eos is not None and token == eos:
            tokens += [eos] * (length - len(tokens))
            break
        nxt = torch.tensor([[token]], device=lm.device)
        out = lm.model(input_ids=nxt, use_cache=True, logits_to_keep=1,
                       **with_cache(lm.model, cache_of(lm.model, out)))
    return tokens, ranks


def generate_targets(lm: LoadedModel, ks: Sequence[int], per_k: int, length: int,
                     sigma: float, seed: int, start_ids: Sequence[int] | None = None) -> list[dict]:
    """The evaluation set: `per_k` targets for each difficulty in `ks` (rows for JSONL)."""
    if not ks or any(k < 1 for k in ks):
        raise UsageError("--k needs difficulties >= 1, e.g. --k 1,6,11,16,21")
    if per_k < 1 or length < 1:
        raise UsageError("--per-k and --length must be >= 1")
    if sigma < 0:
        raise UsageError(f"--sigma must be >= 0, got {sigma}")
    if start_ids is None:
        if lm.bos_token_id is None:
            raise UsageError("this model has no beginning-of-sequence token: pass --start-text")
        start_ids = [lm.bos_token_id]
    start_ids = [int(t) for t in start_ids]
    if not start_ids:
        raise UsageError("start tokens are empty: pass a non-empty --start-text")
    rows = []
    for k in ks:
        for i in range(per_k):
            s = row_seed(seed, k, i)
            ids, ranks = generate_target(lm, k, length, sigma, s, start_ids)
            rows.append({
                "id": f"k{k}-{i}", "k": k, "target_ids": ids, "text": lm.decode(ids),
                "seed": s, "model": lm.spec, "mean_rank": sum(ranks) / len(ranks),
                "sigma": sigma, "start_ids": start_ids,
            })
    return rows
