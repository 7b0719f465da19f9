"""Scoring swap candidates from their first change (DifferentiableLM.variant_losses) against
scoring whole prompts (hard_losses), measured in one run on the default model: B targets,
W single-token swaps per row at evenly spread positions (GCG's candidates), N = 10 and 80.
Prints a table and one JSON line; the speed-ups are the figures.

    python benchmarks/candidate_scoring.py [--model smollm2-135m] [--width 32] [--rows 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def main(argv=None) -> int:
    from dlmi.model.dlm import DifferentiableLM
    from dlmi.model.models import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--rows", type=int, default=5)
    p.add_argument("--target-length", type=int, default=10)
    p.add_argument("--chunk", type=int, default=128, help="gcg's chunk_size")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    lm = load_model(args.model)
    dlm = DifferentiableLM(lm, prefix_ids=[lm.bos_token_id] if lm.bos_token_id is not None
                           else [])
    g = torch.Generator().manual_seed(0)
    B, W, M, V = args.rows, args.width, args.target_length, dlm.vocab_size
    target = torch.randint(V, (B, M), generator=g)
    mask = torch.ones(B, M, dtype=torch.bool)
    out = {}
    print("| N | whole prompts s | from first change s | speed-up | max loss difference |")
    print("| --- | --- | --- | --- | --- |")
    for N in (10, 80):
        base = torch.randint(V, (B, N), generator=g)
        cand = base[:, None].repeat(1, W, 1)
        pos = (torch.arange(W) * N // W)[None].expand(B, W)  # GCG's spread of positions
        cand.scatter_(2, pos[..., None], torch.randint(V, (B, W, 1), generator=g))
        flat, rows = cand.reshape(B * W, N), torch.arange(B).repeat_interleave(W)

        def whole(flat=flat, rows=rows):
            return dlm.hard_losses(flat, target[rows], mask[rows], args.chunk)[0]

        def variants(base=base, flat=flat, rows=rows):
            return dlm.variant_losses(base, flat, rows, target, mask, args.chunk)[0]

        times = {"whole": [], "variants": []}
        with torch.no_grad():
            diff = float((whole() - variants()).abs().max())  # also the warm-up
            for _ in range(args.repeats):
                for name, fn in (("whole", whole), ("variants", variants)):
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
        a, b = statistics.median(times["whole"]), statistics.median(times["variants"])
        out[f"n{N}"] = {"whole_s": a, "variants_s": b, "speedup": a / b, "max_diff": diff}
        print(f"| {N} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {diff:.1e} |")
    print(json.dumps({"width": W, "rows": B, "target_length": M, **out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
