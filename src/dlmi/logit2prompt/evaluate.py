"""Held-out evaluation of a trained inverter, with and without each defence."""

from __future__ import annotations

from collections.abc import Callable

from dlmi.logit2prompt.data import load_shards
from dlmi.logit2prompt.defences import apply
from dlmi.logit2prompt.invert import invert_distribution
from dlmi.logit2prompt.model import Logit2Prompt
from dlmi.logit2prompt.train import split

# (name, setting): no defence, then one setting of each defence of the article.
DEFAULT_DEFENCES = (("none", 0.0), ("temperature", 2.0), ("top_k", 10.0), ("noise", 1.0))


def evaluate(inverter: Logit2Prompt, lm, data, limit: int = 50, held_out: float = 0.05,
             defences=DEFAULT_DEFENCES, beams: int = 4,
             callback: Callable[[], None] | None = None) -> dict[str, dict]:
    """Mean exact match, token F1, BLEU of the best candidate and its output's LCS, over at
    most `limit` held-out prompts, per defence: {"none": {...}, "temperature=2": {...}}."""
    ids, logprobs = load_shards(data)
    _, rows = split(len(ids), held_out)
    rows = list(rows)[:limit]
    report = {}
    for name, value in defences:
        key = "none" if name == "none" else f"{name}={value:g}"
        totals = {"exact_match": 0.0, "token_f1": 0.0, "bleu": 0.0, "lcs_ratio": 0.0}
        for r in rows:
            x = logprobs[r].float()
            if name != "none":
                x = apply(name, x[None], value, seed=r)[0]
            best = invert_distribution(inverter, lm, x, hidden_ids=ids[r], beams=beams,
                                       candidates=1)[0]
            totals["exact_match"] += float(best.exact_match)
            totals["token_f1"] += best.token_f1
            totals["bleu"] += best.bleu
            totals["lcs_ratio"] += best.lcs_ratio
            if callback:
                callback()
        report[key] = {k: v / max(len(rows), 1) for k, v in totals.items()}
        report[key]["prompts"] = len(rows)
    return report
