"""Could a swap be judged from the target's first positions alone? Along a default dlmi-search
run (screen off) on own tuning targets, every step's swaps are also scored in full, and two
readings are taken from the positions up to the incumbent's first miss plus J:

- prune: a lower bound of the swap's cw-prefix loss from those positions alone (after a miss
  the later positions can only add); the share of swaps whose bound is still below the
  incumbent's loss could not be skipped by an exact two-stage scoring;
- screen: whether the step's best swap (by the full loss), and each improving swap, is among
  the 4 best by that partial loss, as a cheaper screen would keep them.

Usage: python benchmarks/tuning/truncation_probe.py TARGETS.jsonl COUNT STEPS
"""

import json
import sys

import torch

from dlmi.methods.base import Batch, row_generators
from dlmi.methods.registry import get_method
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.models import load_model
from dlmi.model.objective import margin_loss_of, strictly_won, target_and_rival

JS = (1, 2, 3, 5)  # positions scored after the first miss
KEEP = 4


def main(path: str, count: int, steps: int) -> None:
    rows = [json.loads(line) for line in open(path)][:count]
    dlm = DifferentiableLM(load_model("smollm2-135m", device="cpu"))
    targets = torch.tensor([r["target_ids"] for r in rows])  # (B, M)
    mask = torch.ones_like(targets, dtype=torch.bool)
    B, M = targets.shape
    batch = Batch(targets, mask, row_generators(list(range(B)), dlm.device))
    cls = get_method("dlmi-search")
    method = cls(cls.config_class(prompt_length=10, steps=steps, screen="off"), dlm)
    state = method.init_state(batch)
    tally = {j: dict(unprunable=0, swaps=0, hits_kept=0, hits=0, best_kept=0, steps=0)
             for j in JS}
    real_score = method._score

    def pairs(prompts, tg):  # target and rival logits (R, M) of hard prompts
        with torch.no_grad():
            logits = dlm.teacher_forced_logits(dlm.embed_prompt(prompts), tg, backward=False)
        return target_and_rival(logits, tg)

    def score(bases, cand, batch, parents=None):
        K, N = cand.shape[1:]
        bt, br = pairs(bases[:, 0], targets)
        won = strictly_won(bt, br, mask)
        first = torch.where(won.all(1), M, (~won).int().argmax(1))  # (B,)
        base = margin_loss_of(bt, br, mask, 1.0, 1.0)  # cw-prefix (B,)
        flat_mask = mask.repeat_interleave(K, 0)
        ct, cr = pairs(cand.reshape(B * K, N), targets.repeat_interleave(K, 0))
        full = margin_loss_of(ct, cr, flat_mask, 1.0, 1.0).view(B, K)
        hits = full < base[:, None] - 1e-6
        for j in JS:
            known = (torch.arange(M)[None] < (first + j).clamp_max(M)[:, None])  # (B, M)
            known = known.repeat_interleave(K, 0)
            # Unknown positions as won by far: each adds -margin before a miss, 0 after one.
            bound = margin_loss_of(torch.where(known, ct, 1e4), torch.where(known, cr, 0.0),
                                   flat_mask, 1.0, 1.0).view(B, K)
            assert bool((bound <= full + 1e-5).all())
            kept = torch.zeros_like(hits).scatter_(
                1, bound.topk(min(KEEP, K), 1, largest=False).indices, True)
            t = tally[j]
            t["unprunable"] += int((bound < base[:, None]).sum())
            t["swaps"] += B * K
            t["hits_kept"] += int((hits & kept).sum())
            t["hits"] += int(hits.sum())
            t["best_kept"] += int(kept[torch.arange(B), full.argmin(1)].sum())
            t["steps"] += B
        return real_score(bases, cand, batch, parents)

    method._score = score
    for step in range(1, steps + 1):
        method.step(state, batch, step)
    for j, t in tally.items():
        print(f"first miss + {j}: swaps a bound cannot skip {t['unprunable']}/{t['swaps']} "
              f"({t['unprunable'] / t['swaps']:.0%}); best swap among the {KEEP} best by the "
              f"partial loss {t['best_kept']}/{t['steps']} ({t['best_kept'] / t['steps']:.0%}), "
              f"improving swaps {t['hits_kept']}/{t['hits']}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
