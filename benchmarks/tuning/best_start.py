"""The best of K random N-token prompts by the search's cw-prefix loss (the prompt, then the
target teacher-forced, no BoS, as the methods feed them): a start for `init_prompt`. Prints one
JSON line: the K losses' min, median and max, and the best prompt's ids.
Usage: python benchmarks/tuning/best_start.py TARGETS.jsonl ID [--prompt-length 80] [--k 32]
       [--seed 0]
"""

import argparse
import json

import torch

from dlmi.model.models import load_model
from dlmi.model.objective import Objective
from dlmi.model.vocab import allowed_token_ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("targets")
    ap.add_argument("target_id")
    ap.add_argument("--prompt-length", type=int, default=80)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    lm = load_model("smollm2-135m", device="cpu")
    target = next(t for t in map(json.loads, open(a.targets)) if t["id"] == a.target_id)
    ids = torch.tensor(target["target_ids"])  # (M,)
    M, N = len(ids), a.prompt_length
    allowed = allowed_token_ids(lm)  # the methods' default vocabulary (no-special)
    g = torch.Generator().manual_seed(a.seed)
    prompts = allowed[torch.randint(len(allowed), (a.k, N), generator=g)]  # (K, N)
    loss_of = Objective("cw-prefix")
    losses = []
    with torch.no_grad():
        for chunk in prompts.split(8):
            x = torch.cat([chunk, ids[:-1].expand(len(chunk), -1)], 1)  # (r, N + M - 1)
            logits = lm.model(input_ids=x).logits[:, N - 1:]  # (r, M, V)
            losses.append(loss_of(logits, ids.expand(len(chunk), -1),
                                  torch.ones(len(chunk), M, dtype=torch.bool)))
    losses = torch.cat(losses)  # (K,)
    print(json.dumps({"target_id": a.target_id, "prompt_length": N, "k": a.k, "seed": a.seed,
                      "loss_min": round(float(losses.min()), 3),
                      "loss_median": round(float(losses.median()), 3),
                      "loss_max": round(float(losses.max()), 3),
                      "best_prompt_ids": prompts[int(losses.argmin())].tolist()}))


if __name__ == "__main__":
    main()
