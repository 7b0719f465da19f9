"""Where the best prompts of a rows file miss: for each row, the teacher-forced probability and
rank of every target token under the row's hard prompt (x marks a position whose argmax is not
the target). Usage: python benchmarks/tuning/misses.py ROWS.jsonl [ROWS.jsonl ...]"""

import json
import sys

import torch

from dlmi.model.dlm import DifferentiableLM
from dlmi.model.models import load_model


def main(paths: list[str]) -> None:
    lm = load_model("smollm2-135m", device="cpu")
    dlm = DifferentiableLM(lm)
    for path in paths:
        print(f"== {path}")
        for line in open(path):
            row = json.loads(line)
            prompt = torch.tensor([row["prompt_ids"]])
            target = torch.tensor([row["target_ids"]])
            with torch.no_grad():
                logits = dlm.teacher_forced_logits(dlm.hard_embed(prompt), target,
                                                   backward=False)[0]  # (M, V)
            probs = logits.softmax(-1)
            p = probs.gather(1, target[0][:, None])[:, 0]
            rank = (probs > p[:, None]).sum(1)
            marks = " ".join(f"{'x' if r else '.'}{q:.2f}/{int(r)}"
                             for q, r in zip(p, rank, strict=True))
            print(f"{row['method']:12s} {row['target_id']:6s} lcs {row['lcs_ratio']:.2f} "
                  f"steps {row['steps']:4d}  {marks}")


if __name__ == "__main__":
    main(sys.argv[1:])
