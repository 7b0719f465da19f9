"""Scoring swap candidates from their first change (DifferentiableLM.variant_losses) against
scoring whole prompts (hard_losses), measured in one run on the default model: B targets,
W single-token swaps per row at evenly spread positions (GCG's candidates), N = 10 and 80.
Prints a table and one JSON line; the speed-ups are the figures.

    python benchmarks/candidate_scoring.py [--model smollm2-135m] [--width 32] [--rows 5]
        [--lengths 10,80] [--forwards 4,8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def compare(lm, lengths: list[int], width: int, rows: int, target_length: int, chunk: int,
            repeats: int, forwards: list[int]) -> dict:
    """Median seconds of scoring `rows` x `width` GCG swaps as whole prompts and from their
    first change, per prompt length; prints a table, returns {"nN": {...}}."""
    from dlmi.model.dlm import DifferentiableLM

    dlm = DifferentiableLM(lm, prefix_ids=[lm.bos_token_id] if lm.bos_token_id is not None
                           else [])
    g = torch.Generator().manual_seed(0)
    B, W, M, V = rows, width, target_length, dlm.vocab_size
    target = torch.randint(V, (B, M), generator=g)
    mask = torch.ones(B, M, dtype=torch.bool)
    out = {}
    print("| N | whole prompts s | " + " | ".join(
        f"from first change, {f} forwards s | speed-up" for f in forwards)
        + " | max loss difference |")
    print("| --- " * (3 + 2 * len(forwards)) + "|")
    for N in lengths:
        base = torch.randint(V, (B, N), generator=g)
        cand = base[:, None].repeat(1, W, 1)
        pos = (torch.arange(W) * N // W)[None].expand(B, W)  # GCG's spread of positions
        cand.scatter_(2, pos[..., None], torch.randint(V, (B, W, 1), generator=g))
        flat, rows = cand.reshape(B * W, N), torch.arange(B).repeat_interleave(W)
        fns = {"whole": lambda flat=flat, rows=rows: dlm.hard_losses(
            flat, target[rows], mask[rows], chunk)[0]}
        for f in forwards:
            fns[f"variants{f}"] = lambda base=base, flat=flat, rows=rows, f=f: dlm.variant_losses(
                base, flat, rows, target, mask, chunk, min_forwards=f)[0]
        times = {name: [] for name in fns}
        with torch.no_grad():
            ref = fns["whole"]()  # also the warm-up
            diff = max(float((fn() - ref).abs().max()) for fn in fns.values())
            for _ in range(repeats):
                for name, fn in fns.items():
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
        med = {name: statistics.median(ts) for name, ts in times.items()}
        row = {"whole_s": med["whole"], "max_diff": diff}
        cells = []
        for f in forwards:
            s_f = med[f"variants{f}"]
            row[f"variants{f}_s"], row[f"speedup{f}"] = s_f, med["whole"] / s_f
            cells.append(f"{s_f:.2f} | {med['whole'] / s_f:.2f}x")
        out[f"n{N}"] = row
        print(f"| {N} | {med['whole']:.2f} | " + " | ".join(cells) + f" | {diff:.1e} |")
    return out


def main(argv=None) -> int:
    from dlmi.model.models import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--rows", type=int, default=5)
    p.add_argument("--target-length", type=int, default=10)
    p.add_argument("--chunk", type=int, default=128, help="gcg's chunk_size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lengths", default="10,80", help="prompt lengths N")
    p.add_argument("--forwards", default="8,4",
                   help="min_forwards of variant_losses to compare (the default first)")
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    out = compare(load_model(args.model), [int(n) for n in args.lengths.split(",")], args.width,
                  args.rows, args.target_length, args.chunk, args.repeats,
                  [int(f) for f in args.forwards.split(",")])
    print(json.dumps({"width": args.width, "rows": args.rows,
                      "target_length": args.target_length, **out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
