"""Speed of DLMI's real step on the default model, against this machine's own matmul rates.

A step here is the runner's step: one `dlmi` (Table 5) step plus its share of the evaluation
every 8 steps, timed from the runner's per-step callback over one evaluation period after a
warm-up step. Printed, from one run: seconds per step (mean over the period, median, spread)
for N = 10 and N = 80 (M = 20, 8 samples) and for N = 80 with 8 targets in one batch; the
step's estimated matmul FLOP/s as a ratio to two references measured in the same run (the
float32 FLOP/s of a 2048^3 matmul, and of the step's own GEMM shapes, replayed); the rate of
the step's matrix products timed in place (profiler) and their share of its time; the memory one
N = 80 step adds (Linux); peak RSS; the model's first (GGUF conversion) and cached load times.
The last line is JSON.

    python benchmarks/speed.py [--period 8] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
GEMMS = {aten.mm.default: (0, 1), aten.bmm.default: (0, 1), aten.addmm.default: (1, 2),
         aten.baddbmm.default: (1, 2)}


def exact_rss() -> None:
    """Make RSS follow live memory (glibc): blocks from 64 KiB up are mmapped and returned to
    the system when freed, instead of kept in the heap where a later high-water mark would
    count memory a previous step already freed."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 1 << 16)  # M_TRIM_THRESHOLD


def matmul_peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """Best float32 FLOP/s of an n x n matmul on this device (the first reference)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


class GemmShapes(TorchDispatchMode):
    """Records the (op, shapes, strides) of every matrix product run under it."""

    def __init__(self):
        super().__init__()
        self.seen: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in GEMMS:
            i, j = GEMMS[func]
            a, b = args[i], args[j]
            self.seen[(func, tuple(a.shape), a.stride(), tuple(b.shape), b.stride())] += 1
        return func(*args, **(kwargs or {}))


def gemm_flops(a_shape, b_shape) -> float:
    """2 m k n, times the batch of a batched product (3-D operands)."""
    batch = a_shape[0] if len(a_shape) == 3 else 1
    return 2.0 * batch * a_shape[-2] * a_shape[-1] * b_shape[-1]


def own_shapes_flops(seen: Counter, repeats: int = 3) -> float:
    """FLOP/s of the recorded products replayed alone, each with its own shapes and memory
    layout, weighted by how often the step runs it (the second reference)."""
    total_flops = total_time = 0.0
    for (_op, a_shape, a_stride, b_shape, b_stride), count in seen.items():
        a = torch.empty_strided(a_shape, a_stride).normal_()
        b = torch.empty_strided(b_shape, b_stride).normal_()
        torch.matmul(a, b)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - t)
        total_flops += count * gemm_flops(a_shape, b_shape)
        total_time += count * best
    return total_flops / total_time


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


def runner_steps(lm, prompt_length: int, period: int, rows: int = 1, target_len: int = 20):
    """Per-step wall times of one evaluation period of a real `dlmi` run, after a warm-up
    step, and the estimated FLOPs of that period. The run has period + 2 steps: the last
    one (evaluated because it is last) is not timed, so the period holds one evaluation."""
    from dlmi.inversion.runner import run_inversion

    gen = torch.Generator().manual_seed(0)
    targets = torch.randint(3, lm.vocab_size, (rows, target_len), generator=gen).tolist()
    stamps, flops = [time.perf_counter()], [0.0]

    def on_step(progress):
        stamps.append(time.perf_counter())
        flops.append(progress.flops)

    run_inversion(lm, targets, method="dlmi", prompt_length=prompt_length, steps=period + 2,
                  eval_every=period, callback=on_step)
    times = [b - a for a, b in zip(stamps, stamps[1:], strict=False)][1:period + 1]
    return times, flops[period + 1] - flops[1]


def step_gemms(lm, prompt_length: int, target_len: int = 20) -> Counter:
    """The matrix products of one bare `dlmi` step (its evaluation is a small share)."""
    from method_speed import time_method  # sibling script in benchmarks/

    gen = torch.Generator().manual_seed(0)
    target = torch.randint(3, lm.vocab_size, (1, target_len), generator=gen)
    with GemmShapes() as mode:
        time_method(lm, "dlmi", target, prompt_length, 1, {})
    return mode.seen


PROFILED_GEMMS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"}


def in_place_gemms(lm, prompt_length: int, period: int) -> tuple[float, float]:
    """The step's matrix products timed where they run (torch.profiler over one evaluation
    period): their FLOP/s, with weights and activations as the step leaves them in memory
    and cache, and their share of the profiled time. This rate bounds what the whole step
    can reach without changing the products themselves."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t = time.perf_counter()
        runner_steps(lm, prompt_length, period)
        wall = time.perf_counter() - t
    flops = seconds = 0.0
    for e in prof.events():
        if e.name not in PROFILED_GEMMS or not e.input_shapes:
            continue
        shapes = e.input_shapes[1:] if e.name in ("aten::addmm", "aten::baddbmm") \
            else e.input_shapes
        flops += gemm_flops(shapes[0], shapes[1])
        seconds += e.self_cpu_time_total / 1e6
    return flops / seconds, seconds / wall


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
    p.add_argument("--period", type=int, default=8,
                   help="timed steps: one evaluation period (eval_every)")
    args = p.parse_args(argv)
    exact_rss()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    load_first, load_cached, lm = time_load(args.model)
    print(f"model load: first {load_first:.1f} s (GGUF conversion), cached {load_cached:.2f} s")
    out = {}
    # A first step of these shapes (not measured) so one-off allocations do not count.
    runner_steps(lm, 80, 1)
    step_mb = added_peak_mb(lambda: runner_steps(lm, 80, 1))
    if step_mb is not None:
        out["peak_step_rss_mb"] = round(step_mb)
        print(f"N=80: a 3-step run (warm-up, one step, one evaluated) adds {step_mb:.0f} MB "
              "at peak")
    peak = matmul_peak_flops()
    print(f"float32 matmul peak (2048^3): {peak / 1e9:.1f} GFLOP/s", flush=True)
    ratios, own_ratios = [], []
    for n, rows in ((10, 1), (80, 1), (80, 8)):
        times, flops = runner_steps(lm, n, args.period, rows)
        sec = sum(times) / len(times)
        own = own_shapes_flops(step_gemms(lm, n))
        achieved = flops / sum(times)
        key = f"sec_per_step_n{n}" + ("" if rows == 1 else f"_b{rows}")
        out[key] = round(sec, 3)
        out[key + "_median"] = round(statistics.median(times), 3)
        out[key + "_spread"] = [round(min(times), 3), round(max(times), 3)]
        if rows == 1:
            in_place, gemm_share = in_place_gemms(lm, n, args.period)
            ratios.append(achieved / peak)
            own_ratios.append(achieved / own)
            out[f"gemm_in_place_ratio_n{n}"] = round(in_place / peak, 3)
            out[f"gemm_time_share_n{n}"] = round(gemm_share, 3)
            print(f"N={n:>2}: its matrix products run at {in_place / 1e9:.1f} GFLOP/s in place "
                  f"({in_place / peak:.2f} of the 2048^3 peak) and take {gemm_share:.0%} of "
                  "the profiled period", flush=True)
        print(f"N={n:>2}, {rows} target(s): {sec:.2f} s/step with evaluation (median "
              f"{statistics.median(times):.2f}, {min(times):.2f}-{max(times):.2f}), "
              f"{flops / len(times) / 1e9:.0f} GFLOP/step, {achieved / 1e9:.1f} GFLOP/s = "
              f"{achieved / peak:.2f} of the 2048^3 peak, {achieved / own:.2f} of its own GEMM "
              f"shapes' rate ({own / 1e9:.1f} GFLOP/s)", flush=True)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.update(flops_ratio=round(min(ratios), 3), flops_ratio_own_shapes=round(min(own_ratios), 3),
               peak_rss_mb=round(peak_rss_mb), load_s_first=round(load_first, 2),
               load_s_cached=round(load_cached, 2))
    print(f"peak RSS {peak_rss_mb:.0f} MB")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
