"""The best of K random N-token prompts by the search's cw-prefix loss (the prompt, then the
target teacher-forced, no BoS, as the methods feed them): a start for `init_prompt`. Prints one
JSON line: the K losses' min, median and max, and the best prompt's ids.
Usage: python benchmarks/tuning/best_start.py TARGETS.jsonl ID [--prompt-length 80] [--k 32]
       [--seed 0]
"""

import argparse
import json

import torch

from dlmi.model.dlm import DifferentiableLM
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
    # The methods' own scoring: DLM input is the prompt, then the target (no BoS).
    dlm = DifferentiableLM(lm)
    losses, _ = dlm.hard_losses(prompts, ids.expand(a.k, -1), torch.ones(a.k, M, dtype=torch.bool),
                                8, Objective("cw-prefix"))  # (K,)
    print(json.dumps({"target_id": a.target_id, "prompt_length": N, "k": a.k, "seed": a.seed,
                      "loss_min": round(float(losses.min()), 3),
                      "loss_median": round(float(losses.median()), 3),
                      "loss_max": round(float(losses.max()), 3),
                      "best_prompt_ids": prompts[int(losses.argmin())].tolist()}))


if __name__ == "__main__":
    main()
