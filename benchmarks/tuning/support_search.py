"""Is there a hard prompt inside the support of a relaxed prompt that reaches the target?

PGD's relaxed prompts reach soft LCS 1.0 on k = 1 tuning targets that no hard search solves,
while their argmax does not. This probe runs `pgd` for STEPS steps, then, from each start's
final X, a local search restricted to X's support (the tokens with the most mass at each
position, at most TOP per position): every single swap inside the support is scored each
round and the best improving one is taken, until none improves or ROUNDS pass. It prints, per
target and start, the soft hits of the relaxed prompt, the support sizes, the argmax's hits
and the hits of the searched prompt (teacher-forced; all M hits = exact). One JSON line each.
Usage: python benchmarks/tuning/support_search.py TARGETS.jsonl ID,ID,... OUT.jsonl [key=value]
"""

import json
import sys

import torch

from dlmi.inversion.config_builder import coerce
from dlmi.methods.base import Batch, row_generators
from dlmi.methods.pgd import PGD, PGDConfig
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.models import load_model
from dlmi.model.objective import Objective
from dlmi.options import parse_value

N, STEPS, TOP, ROUNDS, OBJECTIVE = 10, 64, 16, 40, Objective("cw-prefix")


def hits(dlm, prompts, target):
    """Teacher-forced hits of hard prompts (R, N) on one target (M,): (R,)."""
    return dlm.teacher_forced_hits(prompts, target.expand(prompts.shape[0], -1)).sum(1)


def support_search(dlm, start, support, target, mask):
    """Best-improvement single swaps of `start` (N,) within `support` (list of N token
    tensors). -> (prompt, loss, rounds taken, candidates scored)."""
    inc = start.clone()
    loss, _ = dlm.hard_losses(inc[None], target[None], mask[None], 64, OBJECTIVE)
    scored = 0
    for r in range(ROUNDS):
        cands = []
        for p, tokens in enumerate(support):
            for t in tokens.tolist():
                if t != int(inc[p]):
                    c = inc.clone()
                    c[p] = t
                    cands.append(c)
        if not cands:
            return inc, float(loss), r, scored
        cands = torch.stack(cands)
        rows = torch.zeros(len(cands), dtype=torch.long)
        cl, _ = dlm.variant_losses(inc[None], cands, rows, target[None], mask[None], 64,
                                   OBJECTIVE)
        scored += len(cands)
        best = int(cl.argmin())
        if float(cl[best]) >= float(loss) - 1e-6:
            return inc, float(loss), r, scored
        inc, loss = cands[best], cl[best]
    return inc, float(loss), ROUNDS, scored


def main(targets_path: str, ids: list[str], out_path: str, options: dict) -> None:
    torch.manual_seed(0)
    dlm = DifferentiableLM(load_model("smollm2-135m", device="cpu"))
    rows = {r["id"]: r for r in map(json.loads, open(targets_path))}
    target = torch.tensor([rows[i]["target_ids"] for i in ids])  # (B, M)
    mask = torch.ones_like(target, dtype=torch.bool)
    cfg = PGDConfig(prompt_length=N, **options)
    method = PGD(cfg, dlm)
    batch = Batch(target, mask, row_generators(list(range(len(ids))), torch.device("cpu")))
    state = method.init_state(batch)
    for step in range(1, STEPS + 1):
        out = method.step(state, batch, step)
    _, soft_argmax = method.relaxed_loss(state, batch)  # (B, R, M) training forward's argmax
    B, R, _, _ = state.X.shape
    with open(out_path, "a") as f:
        for b in range(B):
            for r in range(R):
                X = state.X[b, r].detach()  # (N, V)
                mass, tok = X.topk(TOP, -1)  # (N, TOP)
                support = [tok[p][mass[p] > 0] for p in range(N)]
                argmax = X.argmax(-1)
                found, loss, rounds, scored = support_search(dlm, argmax, support, target[b],
                                                             mask[b])
                rec = {"target_id": ids[b], "start": r, "steps": STEPS, "options": options,
                       "soft_hits": int((soft_argmax[b, r] == target[b]).sum()),
                       "support": [len(s) for s in support],
                       "argmax_hits": int(hits(dlm, argmax[None], target[b])[0]),
                       "search_hits": int(hits(dlm, found[None], target[b])[0]),
                       "search_loss": loss, "rounds": rounds, "scored": scored,
                       "best_pgd_loss": float(out.loss[b]), "prompt_ids": found.tolist(),
                       "prompt_text": dlm.lm.decode(dlm.global_ids(found[None])[0].tolist())}
                print(json.dumps(rec), flush=True)
                f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    # key=value pgd options, parsed and type-checked as `--set` does.
    pairs = dict(kv.split("=", 1) for kv in sys.argv[4:])
    opts = coerce(PGDConfig, {k: parse_value(v) for k, v in pairs.items()}, "support_search")
    main(sys.argv[1], sys.argv[2].split(","), sys.argv[3], opts)
