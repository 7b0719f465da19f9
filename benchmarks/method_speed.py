"""Seconds and estimated FLOPs per step of every method, measured in one run on one machine.

Each method optimises the same batch of targets (default: 5 targets of 10 tokens, N = 10, the
cpu-quick shape) for a few timed steps after one warm-up step. Printed as a table plus one JSON
line; ratios to DLMI are the figures to compare across machines.

    python benchmarks/method_speed.py [--model smollm2-135m] [--methods dlmi,gcg] [--steps 3]
        [--set gcg.search_width=32] [--gcg-candidates 80]

--gcg-candidates N also times GCG's candidate evaluation at prompt length N and the same width
(search_width, default 32 here): scoring each swap from its first changed position (what gcg
does) against scoring whole prompts (what it did before), in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def time_method(lm, method: str, targets: torch.Tensor, prompt_length: int, steps: int,
                options: dict) -> tuple[float, float]:
    from dlmi.methods.base import Batch, row_generators
    from dlmi.methods.registry import get_method
    from dlmi.model.dlm import DifferentiableLM

    dlm = DifferentiableLM(lm)
    cls = get_method(method)
    config = cls.config_class(prompt_length=prompt_length, steps=steps + 1, **options)
    batch = Batch(targets, torch.ones_like(targets, dtype=torch.bool),
                  row_generators(list(range(targets.shape[0])), dlm.device))
    inverter = cls(config, dlm)
    state = inverter.init_state(batch)
    inverter.step(state, batch, 1)
    flops = dlm.compute.flops
    t = time.perf_counter()
    for s in range(steps):
        inverter.step(state, batch, s + 2)
    return (time.perf_counter() - t) / steps, (dlm.compute.flops - flops) / steps


def main(argv=None) -> int:
    from dlmi.cli.bench import bench_method_options
    from dlmi.methods.registry import method_names
    from dlmi.model.models import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--methods", default="dlmi-search,dlmi,gbda,reinforce,soda,gcg")
    p.add_argument("--targets", type=int, default=5)
    p.add_argument("--target-length", type=int, default=10)
    p.add_argument("--prompt-length", type=int, default=10)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="METHOD.KEY=VALUE")
    p.add_argument("--gcg-candidates", type=int, metavar="N",
                   help="also time gcg's candidate evaluation at prompt length N")
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)  # as a run does (dlmi.model.numerics)
    methods = method_names() if args.methods == "all" else args.methods.split(",")
    options = bench_method_options(args.set)
    lm = load_model(args.model, device="cpu" if not torch.cuda.is_available() else None)
    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(3, lm.vocab_size, (args.targets, args.target_length), generator=gen)
    print(f"{args.model}: {args.targets} targets x {args.target_length} tokens, "
          f"N = {args.prompt_length}, {torch.get_num_threads()} threads")
    out = {}
    for method in methods:
        sec, flops = time_method(lm, method, targets.to(lm.device), args.prompt_length,
                                 args.steps, options.get(method, {}))
        out[method] = {"sec_per_step": round(sec, 3), "gflop_per_step": round(flops / 1e9, 1)}
        print(f"{method:>16}: {sec:7.2f} s/step  {flops / 1e9:8.1f} GFLOP/step", flush=True)
    if args.gcg_candidates:
        from candidate_scoring import compare  # sibling script in benchmarks/

        width = int(options.get("gcg", {}).get("search_width", 32))
        print(f"gcg candidate evaluation, width {width}, {args.targets} targets, "
              f"N = {args.gcg_candidates}:")
        found = compare(lm, [args.gcg_candidates], width, args.targets, args.target_length,
                        chunk=128, repeats=3, forwards=[8])[f"n{args.gcg_candidates}"]
        out["gcg_candidates"] = {"n": args.gcg_candidates, "width": width,
                                 "whole_s": round(found["whole_s"], 3),
                                 "from_first_change_s": round(found["variants8_s"], 3),
                                 "speedup": round(found["speedup8"], 2)}
    base = out.get("dlmi", {}).get("sec_per_step")
    if base:
        for method in out:
            if method == "gcg_candidates":
                continue
            out[method]["time_vs_dlmi"] = round(out[method]["sec_per_step"] / base, 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
