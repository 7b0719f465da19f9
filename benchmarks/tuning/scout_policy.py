"""Offline test of where a step's swaps should fall: uniform positions, or a scout round that
tries a few swaps at every position and spends the rest where the scouts came closest.

Reads position_hits.py records that hold `gains` (the gain of each of Z's top K tokens at each
position of the incumbent, at one probe step) and simulates, per probe, a step of W swaps
under each rule by Monte Carlo: the chance that at least one swap improves the incumbent
(hit) and the mean gain of the step's best swap (what a stalled search moves by). Rules:
  uniform       W swaps at uniform positions, tokens uniform among the K (dlmi-search now);
  stratified    W swaps spread evenly over the positions, distinct tokens per position;
  scout S/F     S swaps at each position first, then the other W - N*S at the F positions
                whose best scout gain is highest (tokens not yet tried);
  oracle        all W at the position with the most hits (an upper bound no rule reaches).
Usage: python benchmarks/tuning/scout_policy.py RECORDS.jsonl [RECORDS.jsonl ...]
"""

import json
import sys

import torch

W = 32  # swaps per step, dlmi-search's default
DRAWS = 2000  # Monte Carlo steps per probe and rule


def probes(paths):
    """{(file, target, step): (N, K) gains}, from records that carry them."""
    out: dict = {}
    for path in paths:
        for r in map(json.loads, open(path)):
            if "gains" in r:
                out.setdefault((path, r["target_id"], r["step"]), {})[r["position"]] = r["gains"]
    return {key: torch.tensor([rows[p] for p in sorted(rows)]) for key, rows in out.items()}


def uniform(gains, g):
    """(DRAWS, W) gains of W uniform swaps per simulated step."""
    N, K = gains.shape
    pos = torch.randint(N, (DRAWS, W), generator=g)
    tok = torch.randint(K, (DRAWS, W), generator=g)
    return gains[pos, tok]


def shuffled(gains, g):
    """(DRAWS, N, K): each position's gains in a fresh random token order per simulated step,
    so taking them in order draws tokens without replacement."""
    N, K = gains.shape
    order = torch.rand(DRAWS, N, K, generator=g).argsort(-1)
    return gains[torch.arange(N)[None, :, None], order]


def stratified(gains, g):
    """(DRAWS, W) gains of W swaps spread evenly over the positions (W % N at random ones),
    tokens without replacement per position."""
    N = gains.shape[0]
    drawn = shuffled(gains, g)  # (DRAWS, N, K)
    start = torch.rand(DRAWS, N, generator=g).argsort(-1)  # which positions get the extra
    slot = torch.arange(W)
    pos = start[:, slot % N]  # (DRAWS, W)
    return drawn[torch.arange(DRAWS)[:, None], pos, (slot // N)[None].expand(DRAWS, -1)]


def scout(gains, g, per_position: int, focus: int):
    """(DRAWS, W) gains: per_position swaps at each position, the rest at the `focus`
    positions with the best scout gain, tokens drawn without replacement per position."""
    N = gains.shape[0]
    drawn = shuffled(gains, g)  # (DRAWS, N, K)
    scouts = drawn[:, :, :per_position]  # (DRAWS, N, S)
    best_pos = scouts.amax(-1).topk(focus, -1).indices  # (DRAWS, F)
    rest = W - N * per_position
    # The remaining swaps go round-robin over the focus positions, each its next untried token.
    slot = torch.arange(rest)
    pos = best_pos[:, slot % focus]  # (DRAWS, rest)
    idx = per_position + slot // focus  # the next untried token at that position
    follow = drawn[torch.arange(DRAWS)[:, None], pos, idx[None].expand(DRAWS, -1)]
    return torch.cat([scouts.reshape(DRAWS, -1), follow], 1)


def oracle(gains, g):
    best = (gains > 1e-6).float().mean(1).argmax()
    tok = torch.randint(gains.shape[1], (DRAWS, W), generator=g)
    return gains[best][tok]


def main(paths):
    data = probes(paths)
    g = torch.Generator().manual_seed(0)
    rules = {"uniform": uniform, "stratified": stratified, "oracle": oracle}
    for s, f in ((1, 1), (1, 2), (1, 3), (2, 1), (2, 2)):
        rules[f"scout {s}/{f}"] = lambda gains, g, s=s, f=f: scout(gains, g, s, f)
    last = max(step for _, _, step in data)
    for half, keep in ((f"steps 1-{last // 2}", lambda s: s <= last // 2),
                       (f"steps {last // 2 + 1}-{last}", lambda s: s > last // 2)):
        print(half)
        for name, rule in rules.items():
            hit, best = [], []
            for (_, _, step), gains in data.items():
                if not keep(step):
                    continue
                top = rule(gains, g).amax(1)  # (DRAWS,) each simulated step's best swap
                hit.append(float((top > 1e-6).float().mean()))
                best.append(float(top.mean()))
            print(f"  {name:12s} P(hit) {sum(hit) / len(hit):.3f}  mean best gain "
                  f"{sum(best) / len(best):+.4f}  over {len(hit)} probes")


if __name__ == "__main__":
    main(sys.argv[1:])
