"""Which prompt positions hold the swaps that improve the incumbent, and whether the anchor's
one-hot gradient tells them apart, along a dlmi-search run (defaults, screen off).

Every `EVERY` steps, for each target and each prompt position p, all K top tokens of Z at p
are scored as single swaps of the incumbent (cw-prefix loss). Per (target, step, position) it
records the share of them that improve the incumbent (hits), the best gain, and two
gradient readings: the linear gain predicted for the best of those K tokens
(grad[p, current] - min grad[p, top-K]) and the gradient's norm at p. It prints the hit rate
that swaps would get with positions drawn uniformly (dlmi-search's default), towards the end
("late"), and in proportion to each gradient reading, so a position rule is measured
offline before any sweep. Each record also holds which of the K ranks improved
(`rank_hits`, a string of 0/1, rank 1 first), and the run prints the hit rate per rank band,
so the top_k of the proposals and a rank weighting are measured the same way, and the gain
of every one of them (`gains`, incumbent's loss minus the swap's), for allocation rules
simulated offline (scout_policy.py).
Usage: python benchmarks/tuning/position_hits.py TARGETS.jsonl ID,ID,... OUT.jsonl [K [EVERY]]
"""

import json
import sys

import torch
from proposal_hits import OBJECTIVE, STEPS, N, gradient, search_on  # sibling script

EVERY = int(sys.argv[5]) if len(sys.argv) > 5 else 8  # steps between probes
K = int(sys.argv[4]) if len(sys.argv) > 4 else 64  # Z's top tokens scored at every position


def probe(dlm, state, target, mask):
    """Per row and position: hit share, best gain, predicted gain, gradient norm: 4 x (B, N),
    and which of Z's K top tokens there improve: (B, N, K) bool, rank 1 first."""
    inc = state.incumbent  # (B, N)
    B = inc.shape[0]
    grad = gradient(dlm, inc, target, mask)  # (B, N, V)
    with torch.no_grad():
        top = state.Z.detach().topk(K, -1).indices  # (B, N, K)
        inc_loss, _ = dlm.hard_losses(inc, target, mask, 64, OBJECTIVE)  # (B,)
        cand = inc[:, None, None].repeat(1, N, K, 1)  # (B, N, K, N): position p's K swaps
        at = torch.arange(N)[None, :, None, None].expand(B, N, K, 1)
        cand.scatter_(3, at, top[..., None])
        loss, _ = dlm.hard_losses(cand.view(-1, N), target.repeat_interleave(N * K, 0),
                                  mask.repeat_interleave(N * K, 0), 64, OBJECTIVE)
        loss = loss.view(B, N, K)
        gain = inc_loss[:, None, None] - loss  # (B, N, K)
        now = grad.gather(2, inc[..., None])  # (B, N, 1)
        predicted = (now - grad.gather(2, top)).amax(-1).clamp_min(0)  # (B, N)
        hit = gain > 1e-6
        return (hit.float().mean(-1), gain.amax(-1).clamp_min(0), predicted, grad.norm(dim=-1),
                hit, gain)


def rate(records, weight) -> float:
    """Hit rate of a swap whose position is drawn with weights `weight(record list)`."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["target_id"], r["step"]), []).append(r)
    total = 0.0
    for rows in groups.values():
        rows.sort(key=lambda r: r["position"])
        w = torch.tensor(weight(rows), dtype=torch.float) + 1e-12
        total += float((w / w.sum() * torch.tensor([r["hits"] for r in rows])).sum())
    return total / len(groups)


def main(targets_path: str, ids: list[str], out_path: str) -> None:
    dlm, method, batch = search_on(targets_path, ids, screen="off")
    target, mask = batch.target_ids, batch.mask
    state = method.init_state(batch)
    records = []
    for step in range(1, STEPS + 1):
        method.step(state, batch, step)
        if step % EVERY:
            continue
        hits, best, predicted, norm, hit, gain = probe(dlm, state, target, mask)
        for b in range(len(ids)):
            for p in range(N):
                records.append({"target_id": ids[b], "step": step, "position": p,
                                "hits": float(hits[b, p]), "best_gain": float(best[b, p]),
                                "predicted_gain": float(predicted[b, p]),
                                "grad_norm": float(norm[b, p]),
                                "rank_hits": "".join("01"[int(h)] for h in hit[b, p]),
                                "gains": [round(float(x), 5) for x in gain[b, p]]})
        with open(out_path, "w") as f:  # rewritten at each probe: an interrupted run keeps rows
            f.writelines(json.dumps(r) + "\n" for r in records)
    rules = {"uniform": lambda rs: [1.0] * len(rs),
             "late": lambda rs: [r["position"] + 1.0 for r in rs],
             "predicted gain": lambda rs: [r["predicted_gain"] for r in rs],
             "gradient norm": lambda rs: [r["grad_norm"] for r in rs],
             "best position (oracle)": lambda rs: [float(r["hits"] == max(x["hits"] for x in rs))
                                                   for r in rs]}
    for half, keep in (("steps 1-36", lambda s: s <= STEPS // 2),
                       ("steps 37-72", lambda s: s > STEPS // 2)):
        mine = [r for r in records if keep(r["step"])]
        print(half, "  ".join(f"{name}: {rate(mine, w):.3f}" for name, w in rules.items()))


    bands = [(lo, min(2 * lo - 1, K)) for lo in (1, 2, 4, 8, 16, 32, 64, 128, 256) if lo <= K]
    print("hit rate by Z's rank:", "  ".join(
        f"{lo}-{hi}: {rank_rate(records, lo, hi):.3f}" for lo, hi in bands))


def rank_rate(records, lo: int, hi: int) -> float:
    """Share of the swaps to Z's ranks lo..hi (1-based) that improved, over all records."""
    picked = [c for r in records for c in r["rank_hits"][lo - 1:hi]]
    return sum(c == "1" for c in picked) / max(len(picked), 1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), sys.argv[3])
