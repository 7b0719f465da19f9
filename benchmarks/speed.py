"""Speed of one DLMI step on the default model, against this machine's own matmul peak.

Prints, from one run: seconds per step for N = 10 and N = 80 (M = 20, 8 samples) and for
N = 80 with 8 targets in one batch, the step's estimated matmul FLOP/s as a ratio to the
float32 matmul FLOP/s measured in the same run, the peak memory an N = 80 step adds (Linux),
peak RSS, and the model's first (GGUF conversion) and cached load times. The last line is JSON.

    python benchmarks/speed.py [--steps 3] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch


def matmul_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """Best float32 FLOP/s of an n x n matmul on this device (the reference for the ratio)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def time_load(spec: str) -> tuple[float, float, object]:
    """(first load incl. GGUF conversion into an empty cache, cached load, the model)."""
    from dlmi.model.models import load_model

    with tempfile.TemporaryDirectory() as cache:
        os.environ["DLMI_CACHE"] = cache
        t = time.perf_counter()
        load_model(spec, device="cpu")
        first = time.perf_counter() - t
        t = time.perf_counter()
        lm = load_model(spec, device="cpu")
        cached = time.perf_counter() - t
    return first, cached, lm


def time_steps(lm, prompt_length: int, steps: int, target_len: int = 20, rows: int = 1):
    """Mean seconds and estimated FLOPs of one DLMI step (8 samples, `rows` targets)."""
    from method_speed import time_method  # sibling script in benchmarks/

    gen = torch.Generator().manual_seed(0)
    target = torch.randint(3, lm.vocab_size, (rows, target_len), generator=gen)
    return time_method(lm, "dlmi", target, prompt_length, steps, {})


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def added_peak_mb(fn) -> float | None:
    """Peak resident memory a call adds above what the process held before it, in MB (Linux:
    the high-water mark is reset first, so the model's load and conversion do not count)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kb("VmRSS")
    except (OSError, KeyError):
        return None
    fn()
    return (_status_kb("VmHWM") - before) / 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=3, help="timed steps per prompt length")
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)  # as a run does (dlmi.model.numerics)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    load_first, load_cached, lm = time_load(args.model)
    print(f"model load: first {load_first:.1f} s (GGUF conversion), cached {load_cached:.2f} s")
    out = {}
    # First, before other steps leave freed memory in the allocator for this one to reuse.
    step_mb = added_peak_mb(lambda: time_steps(lm, 80, 1))
    if step_mb is not None:
        out["peak_step_rss_mb"] = round(step_mb)
        print(f"N=80: one step (state, warm-up and one timed step) adds {step_mb:.0f} MB at peak")
    peak = matmul_peak_flops()
    print(f"float32 matmul peak (2048^3): {peak / 1e9:.1f} GFLOP/s")
    ratios = []
    for n in (10, 80):
        sec, flops = time_steps(lm, n, args.steps)
        achieved = flops / sec
        ratios.append(achieved / peak)
        out[f"sec_per_step_n{n}"] = round(sec, 3)
        print(f"N={n:>2}: {sec:.2f} s/step, {flops / 1e9:.0f} GFLOP/step, "
              f"{achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.2f} of peak")
    sec, flops = time_steps(lm, 80, args.steps, rows=8)
    out["sec_per_step_n80_b8"] = round(sec, 3)
    print(f"N=80, 8 targets in one batch: {sec:.2f} s/step ({sec / 8:.2f} s per target), "
          f"{flops / sec / peak:.2f} of peak")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.update(flops_ratio=round(min(ratios), 3), peak_rss_mb=round(peak_rss_mb),
               load_s_first=round(load_first, 2), load_s_cached=round(load_cached, 2))
    print(f"peak RSS {peak_rss_mb:.0f} MB")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
