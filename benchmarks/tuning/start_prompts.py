"""Which kind of first prompt a search should start from: the cw-prefix loss (the search's own
objective, after the BoS as Algorithm 2 and the runner put it) of K prompts of each kind, per
target, before any step.

Kinds: `random` (uniform tokens: what dlmi-search starts from, the argmax of Z ~ N(0, 0.01^2)),
`lm` (text sampled from the model itself after the BoS, temperature 1: a fluent start),
`lm-later` (the same, tokens 11-20 of the sample: text from mid-sentence), `bos-end` (random
tokens with the BoS token last, so the target follows a fresh start as it did when Algorithm 2
made it). Writes one JSON line per (target, kind): min and mean loss over the K prompts.
Usage: python benchmarks/tuning/start_prompts.py OUT.jsonl TARGETS.jsonl [TARGETS.jsonl ...]
"""

import json
import sys

import torch

from dlmi.model.dlm import DifferentiableLM
from dlmi.model.models import load_model
from dlmi.model.objective import Objective

N, K, OBJECTIVE = 10, 48, Objective("cw-prefix")


def sampled(model, bos: int, skip: int, g: torch.Generator) -> torch.Tensor:
    """K texts sampled from the model after the BoS, their tokens skip + 1 .. skip + N: (K, N)."""
    ids = torch.full((K, 1), bos)
    for _ in range(skip + N):  # plain sampling loop: the generator keeps runs reproducible
        logits = model(input_ids=ids).logits[:, -1]  # (K, V)
        ids = torch.cat([ids, torch.multinomial(logits.softmax(-1), 1, generator=g)], 1)
    return ids[:, 1 + skip:]


def main(out_path: str, target_paths: list[str]) -> None:
    torch.manual_seed(0)
    lm = load_model("smollm2-135m", device="cpu")
    bos = lm.bos_token_id
    dlm = DifferentiableLM(lm, prefix_ids=[bos])
    g = torch.Generator().manual_seed(5)
    records = []
    for path in target_paths:
        for line in open(path):
            row = json.loads(line)
            target = torch.tensor(row["target_ids"])[None].repeat(K, 1)  # (K, M)
            mask = torch.ones_like(target, dtype=torch.bool)
            with torch.no_grad():
                random = torch.randint(dlm.vocab_size, (K, N), generator=g)
                bos_end = random.clone()
                bos_end[:, -1] = bos
                kinds = {"random": random, "lm": sampled(dlm.model, bos, 0, g),
                         "lm-later": sampled(dlm.model, bos, 10, g), "bos-end": bos_end}
                for kind, prompts in kinds.items():
                    loss, _ = dlm.hard_losses(prompts, target, mask, 64, OBJECTIVE)  # (K,)
                    records.append({"file": path.rsplit("/", 1)[-1], "target_id": row["id"],
                                    "kind": kind, "min_loss": round(float(loss.min()), 4),
                                    "mean_loss": round(float(loss.mean()), 4)})
            with open(out_path, "w") as f:  # rewritten per target: an interrupted run keeps rows
                f.writelines(json.dumps(r) + "\n" for r in records)
    lowest = {}  # (file, target) -> the lowest min loss of any kind
    for r in records:
        key = (r["file"], r["target_id"])
        lowest[key] = min(lowest.get(key, float("inf")), r["min_loss"])
    for kind in ("random", "lm", "lm-later", "bos-end"):
        mine = [r for r in records if r["kind"] == kind]
        wins = sum(r["min_loss"] == lowest[(r["file"], r["target_id"])] for r in mine)
        print(f"{kind:9s} over {len(mine)} targets: min loss "
              f"{sum(r['min_loss'] for r in mine) / len(mine):.3f}, mean loss "
              f"{sum(r['mean_loss'] for r in mine) / len(mine):.3f}, lowest on {wins}")

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
