"""Reading the loss and the exactness proof off the swaps' logits: one top-2 pass over the
vocabulary (Objective.loss_and_exact in dlmi.model.objective) against the direct formulas (a
copy of the logits with the target masked, its max, and an argmax for the prefix and one for
the proof), measured in one run on the default model. Prints the seconds of the reduction
alone on (R, M, V) logits in float32 and bfloat16, then (--steps K) the seconds per whole step
of dlmi-search and gcg (width 32, top-k 64, default screen) with each, K steps after a
warm-up, alternating the two in rounds so that the machine's drift falls on both (the gradient
step's own loss reads the top-2 pass in both). Then one JSON line.

    python benchmarks/logit_reduction.py [--model smollm2-135m] [--rows 4] [--steps 4]
        [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dlmi.model.objective import (
    MARGIN_OBJECTIVES,
    Objective,
    masked_cross_entropy,
    won_positions,
)

TOP2 = Objective.loss_and_exact


def top2_loss_and_exact(logits, target_ids, mask, objective="ce", margin=1.0):
    """The shipped reduction, called as the direct formulas are."""
    return TOP2(Objective(objective, margin), logits, target_ids, mask)


def direct_loss_and_exact(logits, target_ids, mask, objective="ce", margin=1.0):
    """The formulas the top-2 pass replaced, kept here as the reference: (R,), (R,) bool."""
    argmax = logits.argmax(-1)
    exact = won_positions(argmax, target_ids, mask).all(1)
    if objective not in MARGIN_OBJECTIVES:
        return masked_cross_entropy(logits, target_ids, mask), exact
    after_miss = MARGIN_OBJECTIVES[objective]
    full = logits.float()
    target = full.gather(-1, target_ids[..., None])[..., 0]
    other = full.scatter(-1, target_ids[..., None], float("-inf")).amax(-1)
    per_position = (other - target).clamp_min(-margin)
    if after_miss is not None:
        won = won_positions(full.argmax(-1), target_ids, mask)
        reached = torch.cat([torch.ones_like(won[:, :1]), won[:, :-1]], 1).cumprod(1)
        per_position = torch.where(reached.bool(), per_position,
                                   after_miss * per_position.clamp_min(0.0))
    m = mask.to(per_position.dtype)
    return (per_position * m).sum(1) / m.sum(1).clamp_min(1.0), exact


def reduction_alone(V: int, repeats: int = 10) -> dict:
    """Median seconds of both on 32 candidates x 10 target positions of random logits."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.randn(32, 10, V, generator=g).to(dtype)
        target = torch.randint(V, (32, 10), generator=g)
        mask = torch.ones(32, 10, dtype=torch.bool)
        times = {}
        for name, fn in (("direct", direct_loss_and_exact),
                         ("top2", top2_loss_and_exact)):
            fn(logits, target, mask, "cw-prefix")
            runs = []
            for _ in range(repeats):
                t = time.perf_counter()
                fn(logits, target, mask, "cw-prefix")
                runs.append(time.perf_counter() - t)
            times[name] = statistics.median(runs)
        same = [torch.equal(a, b) for a, b in zip(
            direct_loss_and_exact(logits, target, mask, "cw-prefix"),
            top2_loss_and_exact(logits, target, mask, "cw-prefix"), strict=True)]
        name = str(dtype).replace("torch.", "")
        out[name] = {**times, "speedup": times["direct"] / times["top2"], "identical": all(same)}
    return out


def whole_steps(lm, rows: int, steps: int, rounds: int) -> dict:
    from method_speed import time_method  # sibling script in benchmarks/

    targets = torch.randint(3, lm.vocab_size, (rows, 10),
                            generator=torch.Generator().manual_seed(0))
    methods = {"dlmi-search": {}, "gcg": {"search_width": 32, "top_k": 64}}
    direct = lambda objective, logits, target_ids, mask: direct_loss_and_exact(  # noqa: E731
        logits, target_ids, mask, objective.name, objective.margin)
    out = {}
    for method, options in methods.items():
        runs: dict[str, list[float]] = {"direct": [], "top2": []}
        for _ in range(rounds):
            for name, fn in (("direct", direct), ("top2", TOP2)):
                Objective.loss_and_exact = fn  # what variant_losses and hard_losses call
                try:
                    runs[name].append(time_method(lm, method, targets, 10, steps, options)[0])
                finally:
                    Objective.loss_and_exact = TOP2
        d, t = statistics.median(runs["direct"]), statistics.median(runs["top2"])
        out[method] = {"direct_s": d, "top2_s": t, "speedup": d / t}
    return out


def main(argv=None) -> int:
    from dlmi.model.models import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--steps", type=int, default=4, help="whole steps timed (0: none)")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)
    lm = load_model(args.model)
    alone = reduction_alone(lm.vocab_size)
    print(f"| logits (32 x 10 x {lm.vocab_size}) | direct ms | top-2 ms | speed-up | "
          "identical |")
    print("| --- | --- | --- | --- | --- |")
    for dtype, r in alone.items():
        print(f"| {dtype} | {r['direct'] * 1e3:.1f} | {r['top2'] * 1e3:.1f} | "
              f"{r['speedup']:.2f}x | {r['identical']} |")
    steps = whole_steps(lm, args.rows, args.steps, args.rounds) if args.steps else {}
    if steps:
        print(f"\n| method ({args.rows} rows, N = 10) | direct s/step | top-2 s/step | "
              "speed-up |")
        print("| --- | --- | --- | --- |")
        for method, r in steps.items():
            print(f"| {method} | {r['direct_s']:.2f} | {r['top2_s']:.2f} | {r['speedup']:.2f}x |")
    print(json.dumps({"rows": args.rows, "steps_timed": args.steps, "alone": alone,
                      "steps": steps}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
