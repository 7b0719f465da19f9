"""Perplexity of token sequences under the subject model (prompt and target fluency)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dlmi.model.models import LoadedModel


@torch.no_grad()
def perplexity(lm: LoadedModel, ids: Sequence[int], context: Sequence[int] | None = None) -> float:
    """exp(mean negative log-likelihood of `ids` given `context` and their own prefixes).

    Context defaults to the model's BoS token (how the paper's targets start); without a BoS
    the first token has no prediction and is skipped.
    """
    if context is None:
        context = [lm.bos_token_id] if lm.bos_token_id is not None else []
    context = list(context)
    ids = list(ids)
    full = torch.tensor([context + ids], device=lm.device)
    logits = lm.model(input_ids=full).logits[0, :-1].float()  # predicts full[1:]
    nll = F.cross_entropy(logits, full[0, 1:], reduction="none")
    scored = nll[max(len(context) - 1, 0):]  # only the positions that predict `ids`
    if scored.numel() == 0:
        return float("nan")
    return math.exp(scored.mean().item())
