"""How often each proposal source improves the incumbent along a dlmi-search run (defaults).

Every `every` steps, W single-token swaps of the incumbent are drawn per source, at uniform
positions, each new token uniform among the source's top-K at that position: z (dlmi-search's
own proposals), grad (the incumbent's one-hot gradient, GCG's), lm (the model's next-token
prediction given the prompt before it), borda (the tokens best ranked by z and grad together:
the sum of their two ranks) and rand (uniform over the vocabulary). Each swap is
scored by the cw-prefix loss; a hit lowers the incumbent's loss. Writes one JSON line per
(target, source, step) and prints the mean hit rate per source, early and late.
Usage: python benchmarks/tuning/proposal_hits.py TARGETS.jsonl ID,ID,... OUT.jsonl
"""

import json
import sys

import torch

from dlmi.methods.base import Batch, row_generators
from dlmi.methods.dlmi_search import DLMISearch, DLMISearchConfig, top_k_pick
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.models import load_model
from dlmi.model.objective import Objective

STEPS, EVERY, W, K, N = 72, 8, 32, 64, 10
OBJECTIVE = Objective("cw-prefix")


def rank(scores: torch.Tensor) -> torch.Tensor:
    """0 for the highest score of each position (..., V), V - 1 for the lowest."""
    return scores.argsort(-1, descending=True).argsort(-1).float()


def gradient(dlm, inc, target, mask):
    """The incumbent's (B, N) one-hot gradient of the loss: (B, N, V)."""
    V = dlm.W_E.shape[0]
    onehot = torch.nn.functional.one_hot(inc, V).float().requires_grad_(True)
    logits = dlm.teacher_forced_logits(onehot @ dlm.W_E, target, soft_positions=N)
    OBJECTIVE(logits, target, mask).sum().backward()
    return onehot.grad


def sources(dlm, state, target, mask, pos, pick, g):
    """The new token of every swap (B, W), per source."""
    inc = state.incumbent  # (B, N)
    B, V = inc.shape[0], dlm.W_E.shape[0]
    grad = gradient(dlm, inc, target, mask)  # (B, N, V)
    with torch.no_grad():
        logp, first = dlm.prompt_log_probs(dlm.embed_prompt(inc))  # (B, N - first, V)
        lm_scores = torch.cat([torch.zeros(B, first, V), logp], 1)  # no prediction: uniform
        borda = -(rank(state.Z.detach()) + rank(-grad))  # (B, N, V) high: both agree
        return {"z": top_k_pick(state.Z.detach(), pos, pick, K),
                "borda": top_k_pick(borda, pos, pick, K),
                "grad": top_k_pick(-grad, pos, pick, K),
                "lm": top_k_pick(lm_scores, pos, pick, K),
                "rand": torch.randint(V, pos.shape, generator=g)}


def search_on(targets_path: str, ids: list[str], **options):
    """A dlmi-search (N, OBJECTIVE, options) on the default model over the targets `ids` of a
    targets file: (dlm, method, batch); the batch's target and mask are (B, M)."""
    torch.manual_seed(0)
    dlm = DifferentiableLM(load_model("smollm2-135m", device="cpu"))
    rows = {r["id"]: r for r in map(json.loads, open(targets_path))}
    target = torch.tensor([rows[i]["target_ids"] for i in ids])  # (B, M)
    mask = torch.ones_like(target, dtype=torch.bool)
    method = DLMISearch(DLMISearchConfig(prompt_length=N, objective=OBJECTIVE.name, **options), dlm)
    batch = Batch(target, mask, row_generators(list(range(len(ids))), torch.device("cpu")))
    return dlm, method, batch


def main(targets_path: str, ids: list[str], out_path: str) -> None:
    dlm, method, batch = search_on(targets_path, ids)
    target, mask = batch.target_ids, batch.mask
    state = method.init_state(batch)
    g = torch.Generator().manual_seed(1)
    B, records = len(ids), []
    for step in range(1, STEPS + 1):
        method.step(state, batch, step)
        if step % EVERY:
            continue
        inc = state.incumbent
        inc_loss, _ = dlm.hard_losses(inc, target, mask, 64, OBJECTIVE)  # (B,)
        pos = torch.randint(N, (B, W), generator=g)
        pick = torch.randint(K, (B, W), generator=g)
        for name, tokens in sources(dlm, state, target, mask, pos, pick, g).items():
            cand = inc[:, None].repeat(1, W, 1).scatter_(2, pos[..., None], tokens[..., None])
            loss, _ = dlm.hard_losses(cand.view(-1, N), target.repeat_interleave(W, 0),
                                      mask.repeat_interleave(W, 0), 64, OBJECTIVE)
            loss = loss.view(B, W)
            for b in range(B):
                records.append({"target_id": ids[b], "source": name, "step": step,
                                "loss": float(inc_loss[b]),
                                "hits": float((loss[b] < inc_loss[b] - 1e-6).float().mean()),
                                "gain": float((inc_loss[b] - loss[b].min()).clamp_min(0))})
        with open(out_path, "w") as f:  # rewritten at each probe: an interrupted run keeps rows
            f.writelines(json.dumps(r) + "\n" for r in records)
    for name in ("z", "grad", "borda", "lm", "rand"):
        mine = [r for r in records if r["source"] == name]
        early = [r["hits"] for r in mine if r["step"] <= STEPS // 2]
        late = [r["hits"] for r in mine if r["step"] > STEPS // 2]
        print(f"{name:5s} hit rate steps 1-{STEPS // 2}: {sum(early) / len(early):.3f}  "
              f"{STEPS // 2 + 1}-{STEPS}: {sum(late) / len(late):.3f}  "
              f"mean best gain {sum(r['gain'] for r in mine) / len(mine):.3f}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), sys.argv[3])
