"""Is a stuck best prompt a local minimum of single swaps over the whole vocabulary, or only
of the top-K tokens the searches propose? For each inexact row of a rows file (tuning rows
only), its best prompt is scored against K swaps per position from its one-hot gradient's
top-K (GCG's proposals: the neighbourhood dlmi-search and gcg search), R swaps per position
with uniform tokens (the rest of the vocabulary) and, two swaps away, the top-K2 gradient swaps
at every other position of each of its P best single-swap neighbours (`pair`: a lookahead
move). A hit lowers the cw-prefix loss; a win also lengthens the teacher-forced prefix of won
target positions (greedy decoding follows the target that much further). One JSON line per
(row, source).
Usage: python benchmarks/tuning/stuck_neighbourhood.py ROWS.jsonl OUT.jsonl [R] [ROWS_MAX]
"""

import json
import sys

import torch

from dlmi.model.dlm import DifferentiableLM
from dlmi.model.models import load_model
from dlmi.model.objective import Objective, strictly_won, target_and_rival

K, K2, P, OBJECTIVE = 64, 16, 8, Objective("cw-prefix")
SPECIAL = 17  # SmolLM2's ids below 17 are special tokens


def prefix_won(dlm, prompts, target, mask) -> torch.Tensor:
    """Leading target positions each prompt (R, N) wins strictly under teacher forcing: (R,)."""
    with torch.no_grad():
        logits = dlm.teacher_forced_logits(dlm.hard_embed(prompts), target, backward=False)
    won = strictly_won(*target_and_rival(logits, target), mask)  # (R, M)
    return won.int().cumprod(1).sum(1)


def gradient(dlm, prompt, target, mask) -> torch.Tensor:
    """The one-hot gradient of the loss at prompt (N,): (N, V)."""
    onehot = torch.nn.functional.one_hot(prompt[None], dlm.W_E.shape[0]).float()
    onehot.requires_grad_(True)
    logits = dlm.teacher_forced_logits(onehot @ dlm.W_E, target, soft_positions=len(prompt))
    OBJECTIVE(logits, target, mask).sum().backward()
    return onehot.grad[0]


def lookahead(dlm, base, singles, single_loss, target, mask):
    """The pair moves: the top-K2 gradient swaps at every other position of each of the P
    lowest-loss single swaps `singles` (S, N) of base (N,) -> prompts (P * (N - 1) * K2, N)."""
    N, out = len(base), []
    for first in singles[single_loss.argsort()[:P]]:
        at = int((first != base).nonzero()[0, 0])
        grad = gradient(dlm, first, target, mask)  # (N, V)
        others = torch.tensor([p for p in range(N) if p != at])
        top = (-grad[others]).topk(K2, dim=1).indices  # (N - 1, K2)
        out.append(swaps(first, others.repeat_interleave(K2), top.reshape(-1)))
    return torch.cat(out)


def swaps(base, pos, tokens):
    """base (N,) with tokens (S,) put at pos (S,): (S, N)."""
    cand = base[None].repeat(len(pos), 1)
    cand[torch.arange(len(pos)), pos] = tokens
    return cand


def main(rows_path: str, out_path: str, R: int = 256, rows_max: int = 4) -> None:
    dlm = DifferentiableLM(load_model("smollm2-135m", device="cpu"))
    V = dlm.W_E.shape[0]
    g = torch.Generator().manual_seed(0)
    rows = [r for r in map(json.loads, open(rows_path)) if not r["exact_match"]][:rows_max]
    records = []
    for row in rows:
        base = torch.tensor(row["prompt_ids"])  # (N,)
        target = torch.tensor([row["target_ids"]])  # (1, M)
        mask = torch.ones_like(target, dtype=torch.bool)
        N = len(base)
        grad = gradient(dlm, base, target, mask)  # (N, V)
        base_loss, _ = dlm.hard_losses(base[None], target, mask, 64, OBJECTIVE)
        base_won = int(prefix_won(dlm, base[None], target, mask)[0])
        top = (-grad).topk(K, dim=1).indices  # (N, K)
        sources = {
            "grad": (torch.arange(N).repeat_interleave(K), top.reshape(-1)),
            "rand": (torch.arange(N).repeat_interleave(R),
                     torch.randint(SPECIAL, V, (N * R,), generator=g)),
        }
        singles, single_loss = [], []
        for name in ("grad", "rand", "pair"):
            if name == "pair":
                cand = lookahead(dlm, base, torch.cat(singles), torch.cat(single_loss),
                                 target, mask)
                pos = (cand != base).int().argmax(1)  # its first change
            else:
                pos, tokens = sources[name]
                cand = swaps(base, pos, tokens)  # (S, N)
            with torch.no_grad():
                loss, exact = dlm.hard_losses(cand, target.expand(len(cand), -1),
                                              mask.expand(len(cand), -1), 64, OBJECTIVE)
            singles.append(cand)
            single_loss.append(loss)
            hit = loss < base_loss - 1e-6
            won = prefix_won(dlm, cand[hit], target.expand(int(hit.sum()), -1),
                             mask.expand(int(hit.sum()), -1)) if hit.any() else torch.zeros(0)
            rec = {"target_id": row["target_id"], "lcs": row["lcs_ratio"], "source": name,
                   "swaps": len(pos), "base_loss": float(base_loss), "base_won": base_won,
                   "hits": int(hit.sum()), "hit_rate": float(hit.float().mean()),
                   "longer_prefix": int((won > base_won).sum()), "exact": int(exact.sum()),
                   "best_gain": float((base_loss - loss.min()).clamp_min(0)),
                   "hit_positions": sorted(set(pos[hit].tolist()))}
            records.append(rec)
            print(json.dumps(rec), flush=True)
            with open(out_path, "w") as f:  # rewritten per record: an interrupted run keeps rows
                f.writelines(json.dumps(r) + "\n" for r in records)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:5]))
