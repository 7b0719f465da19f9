"""The prefix KV cache against recomputing the fixed text, measured in one run: a prompt span
inside the default model's chat template (system message and user header before the span),
for the two forwards every method spends its time in: a no-grad batch of hard candidates (the
search of dlmi-search and GCG) and a teacher-forced forward + backward of one relaxed prompt
(a DLMI step). Prints a table and one JSON line; the ratios are the figures.

    python benchmarks/prefix_cache.py [--model smollm2-135m] [--candidates 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    from dlmi.model.context import SpanContext
    from dlmi.model.dlm import DifferentiableLM
    from dlmi.model.models import load_model
    from dlmi.prompting.template import parse_template

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--candidates", type=int, default=64)
    p.add_argument("--prompt-length", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    lm = load_model(args.model)
    before, after = parse_template("{prompt} Is this review positive?", chat=True).ids(lm)
    context = SpanContext.single(before, after)
    g = torch.Generator().manual_seed(0)
    N, R = args.prompt_length, args.candidates
    target = torch.tensor([lm.encode("Yes, it is positive.")])
    M = target.shape[1]
    rows = {}
    for name, limit in (("recomputed", None), ("cached", 4)):
        dlm = DifferentiableLM(lm, context=context)
        dlm.prefix_cache_min = limit
        V = dlm.vocab_size
        prompts = torch.randint(V, (R, N), generator=g)
        targets, mask = target.repeat(R, 1), torch.ones(R, M, dtype=torch.bool)

        def search(dlm=dlm, prompts=prompts, targets=targets, mask=mask):
            dlm.hard_losses(prompts, targets, mask, chunk=R)

        def gradient_step(dlm=dlm, V=V):
            p = torch.softmax(torch.randn(1, N, V, generator=g), -1).requires_grad_()
            dlm.teacher_forced_logits(dlm.soft_embed(p), target).logsumexp(-1).sum().backward()

        with torch.no_grad():
            search_s = median_seconds(search, args.repeats)
        rows[name] = {"search_s": search_s, "gradient_s": median_seconds(gradient_step,
                                                                         args.repeats),
                      "cached_tokens": dlm.cached_prefix}
    fixed = len(before) + len(after)
    print(f"chat template: {len(before)} fixed tokens before the span ({dlm.cached_prefix} "
          f"cached), {len(after)} after; N = {N}, M = {M}, {R} candidates per search batch")
    print("| forward | recomputed s | cached s | speed-up |")
    print("| --- | --- | --- | --- |")
    for key, label in (("search_s", f"{R} hard candidates"), ("gradient_s", "DLMI step")):
        a, b = rows["recomputed"][key], rows["cached"][key]
        print(f"| {label} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")
    print(json.dumps({"fixed_tokens": fixed, "cached_tokens": rows["cached"]["cached_tokens"],
                      "search_speedup": rows["recomputed"]["search_s"] / rows["cached"]["search_s"],
                      "gradient_speedup": rows["recomputed"]["gradient_s"]
                      / rows["cached"]["gradient_s"], **{f"{k}_{n}": v for n, r in rows.items()
                                                         for k, v in r.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
