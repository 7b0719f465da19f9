"""Screening swap candidates in bfloat16 (dlmi.model.screening) against scoring them all in
float32, measured in one run on the default model: B rows, W single-token swaps per row at
uniform positions of a prompt that walks (each round moves to the float32 best swap, as a
search does). Prints, per width W, the median seconds of both, the speed-up, and how often the
float32 best swap is among those the screen keeps, and how often the screen's "no better than
its base" verdict on a dropped swap (what makes it leave Z's top tokens) is float32's. With
--steps K, also the seconds and FLOPs per whole step of dlmi-search and gcg (width 32, top-k
64), screen off against bfloat16, K steps after a warm-up on the same random targets
(method_speed.py's timing). Then one JSON line.

    python benchmarks/screening.py [--model smollm2-135m] [--widths 32,64,128] [--rows 4]
        [--keep 4] [--rounds 5] [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def measure(dlm, low, width: int, rows: int, keep: int, rounds: int, name: str,
            seed: int) -> dict:
    from dlmi.model.objective import Objective
    from dlmi.model.screening import screened_variant_losses

    objective = Objective(name)
    g = torch.Generator().manual_seed(seed)
    V, N, M = dlm.vocab_size, 10, 10
    base = torch.randint(V, (rows, N), generator=g)
    target = torch.randint(V, (rows, M), generator=g)
    mask = torch.ones(rows, M, dtype=torch.bool)
    index = torch.arange(rows).repeat_interleave(width)  # (R,)
    full_s, screen_s, found, regret, agree, dropped = [], [], 0, [], 0, 0
    for _ in range(rounds):
        cand = base.repeat_interleave(width, 0)  # (R, N)
        pos = torch.randint(N, (rows * width,), generator=g)
        cand[torch.arange(rows * width), pos] = torch.randint(V, (rows * width,), generator=g)
        t = time.perf_counter()
        full, _ = dlm.variant_losses(base, cand, index, target, mask, 64, objective)
        full_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        s = screened_variant_losses(dlm, low, base, cand, index, target, mask, keep, 64,
                                    objective)
        screen_s.append(time.perf_counter() - t)
        base_loss, _ = dlm.hard_losses(base, target, mask, 64, objective)  # (rows,)
        out_ = ~s.kept  # the dropped swaps: the screen's verdict decides what Z forgets
        agree += int((s.no_gain == (full >= base_loss[index]))[out_].sum())
        dropped += int(out_.sum())
        full, got = full.view(rows, width), s.loss.view(rows, width)
        best = full.argmin(1)
        found += int(s.kept.view(rows, width)[torch.arange(rows), best].sum())
        regret += (got.min(1).values - full.min(1).values).tolist()
        base = cand.view(rows, width, N)[torch.arange(rows), best]  # walk on
    full_m, screen_m = statistics.median(full_s), statistics.median(screen_s)
    return {"width": width, "float32_s": full_m, "screened_s": screen_m,
            "speedup": full_m / screen_m, "best_kept": found / (rounds * rows),
            "mean_regret": statistics.mean(regret),
            "verdict_agreement": agree / max(dropped, 1)}


def whole_steps(lm, rows: int, steps: int) -> dict:
    """Seconds and GFLOP per step of dlmi-search and gcg, screen off against bfloat16."""
    from method_speed import time_method  # sibling script in benchmarks/

    targets = torch.randint(3, lm.vocab_size, (rows, 10), generator=torch.Generator()
                            .manual_seed(0))
    methods = {"dlmi-search": {}, "gcg": {"search_width": 32, "top_k": 64}}
    print(f"\n| method ({rows} rows, N = 10) | off s/step | screened s/step | speed-up | "
          "off GFLOP/step | screened GFLOP/step |")
    print("| --- | --- | --- | --- | --- | --- |")
    out = {}
    for method, options in methods.items():
        off = time_method(lm, method, targets, 10, steps, {**options, "screen": "off"})
        on = time_method(lm, method, targets, 10, steps, {**options, "screen": "bfloat16"})
        out[method] = {"off_s": off[0], "screened_s": on[0], "speedup": off[0] / on[0],
                       "off_gflop": off[1] / 1e9, "screened_gflop": on[1] / 1e9}
        print(f"| {method} | {off[0]:.2f} | {on[0]:.2f} | {off[0] / on[0]:.2f}x | "
              f"{off[1] / 1e9:.0f} | {on[1] / 1e9:.0f} |")
    return out


def main(argv=None) -> int:
    from dlmi.model.dlm import DifferentiableLM
    from dlmi.model.models import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--widths", default="32,64,128")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--keep", type=int, default=4, help="screen_keep")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--objective", default="cw-prefix")
    p.add_argument("--steps", type=int, default=0,
                   help="also time this many whole steps of dlmi-search and gcg (0: no)")
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    dlm = DifferentiableLM(load_model(args.model))
    low = dlm.lowered(torch.bfloat16)
    low.hard_losses(torch.zeros(1, 10, dtype=torch.long), torch.zeros(1, 10, dtype=torch.long),
                    torch.ones(1, 10, dtype=torch.bool))  # warm-up of the bfloat16 kernels
    print("| swaps per row | float32 s | screened s | speed-up | float32 best kept | "
          "mean loss regret | dropped swaps' no-gain verdict as float32's |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    out = []
    for i, w in enumerate(int(x) for x in args.widths.split(",")):
        r = measure(dlm, low, w, args.rows, args.keep, args.rounds, args.objective, seed=i)
        out.append(r)
        print(f"| {w} | {r['float32_s']:.2f} | {r['screened_s']:.2f} | {r['speedup']:.2f}x | "
              f"{r['best_kept']:.0%} | {r['mean_regret']:.4f} | {r['verdict_agreement']:.1%} |")
    steps = whole_steps(dlm.lm, args.rows, args.steps) if args.steps else {}
    print(json.dumps({"rows": args.rows, "keep": args.keep, "rounds": args.rounds,
                      "objective": args.objective, "results": out, "steps": steps}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
