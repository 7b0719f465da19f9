"""Are the searches' misses the tokens Algorithm 2 drew below rank 1?

For every target in the rows files, the rank of each target token in the context Algorithm 2
made it in (the row's start tokens, the model's BoS, then the target before it); for every
inexact row, the first position where its greedy output leaves the target (where greedy
decoding, and so the search's prefix, stops). Prints, per file and over all files, how often
that first miss is a token of rank >= 2 against the share of such tokens among the target
positions the rows could have missed at (the first miss or later), and the target token's
logit margin over its best rival at the miss, given the start tokens and given the row's prompt.
Usage: python benchmarks/tuning/miss_ranks.py ROWS.jsonl [ROWS.jsonl ...] [--out FILE.jsonl]
"""

import json
import sys

import torch

from dlmi.model.models import load_model
from dlmi.model.objective import target_and_rival


def ranks_and_margins(lm, context_ids: list[int], target_ids: list[int]):
    """Rank (1 = the model's first choice) of each target token given the context and the target
    before it, and its margin: its logit minus the best other token's (> 0 where it wins)."""
    ids = torch.tensor([list(context_ids) + list(target_ids)])
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0].float()  # (S + M, V)
    S = len(context_ids)
    rows = logits[S - 1:S - 1 + len(target_ids)]  # (M, V): the logits that predict each token
    own, rival = target_and_rival(rows[None], torch.tensor([target_ids]))  # 2 x (1, M)
    return ((rows > own[0, :, None]).sum(1) + 1).tolist(), (own - rival)[0].tolist()


def first_miss(output_ids: list[int], target_ids: list[int]) -> int | None:
    for i, t in enumerate(target_ids):
        if i >= len(output_ids) or output_ids[i] != t:
            return i
    return None


def main(argv: list[str]) -> None:
    out = None
    if "--out" in argv:
        i = argv.index("--out")
        out, argv = argv[i + 1], argv[:i] + argv[i + 2:]
    lm = load_model("smollm2-135m", device="cpu")
    cache: dict[tuple, tuple[list[int], list[float]]] = {}  # the start's, per target
    records = []
    for path in argv:
        for line in open(path):
            row = json.loads(line)
            if row.get("exact_match") or row.get("interrupted"):
                continue
            start = row.get("start_ids") or [lm.bos_token_id]
            key = (tuple(start), tuple(row["target_ids"]))
            if key not in cache:
                cache[key] = ranks_and_margins(lm, list(start), list(row["target_ids"]))
            ranks, start_margins = cache[key]
            miss = first_miss(row["output_ids"], row["target_ids"])
            if miss is None:
                continue
            _, margins = ranks_and_margins(lm, row["prompt_ids"], row["target_ids"])
            records.append({"file": path, "target_id": row["target_id"], "seed": row["seed"],
                            "k": row.get("k"), "prompt_length": row["prompt_length"],
                            "first_miss": miss, "rank_at_miss": ranks[miss], "ranks": ranks,
                            "start_margin_at_miss": start_margins[miss],
                            "prompt_margin_at_miss": margins[miss]})
    if out:
        with open(out, "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
    groups = [(p, [r for r in records if r["file"] == p]) for p in argv]
    groups += [("all", records), ("all, k = 1", [r for r in records if r["k"] == 1])]
    for name, group in groups:
        if not group:
            continue
        hit = sum(r["rank_at_miss"] >= 2 for r in group) / len(group)
        later = [k for r in group for k in r["ranks"][r["first_miss"]:]]
        base = sum(k >= 2 for k in later) / len(later)
        every = [k for r in group for k in r["ranks"]]
        share = sum(k >= 2 for k in every) / len(every)
        print(f"{name}: {len(group)} inexact rows, first miss at a rank >= 2 token "
              f"{hit:.2f} of rows, against {base:.2f} of the positions from the miss on "
              f"and {share:.2f} of all positions; margin at the miss given the start "
              f"{sum(r['start_margin_at_miss'] for r in group) / len(group):+.2f}, given the "
              f"prompt {sum(r['prompt_margin_at_miss'] for r in group) / len(group):+.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
