"""Memory one DLMI step adds on the default model (N = 80, M = 20, 8 samples, one target).

RSS is made to follow live memory (glibc: every block from 64 KiB is mmapped and returned when
freed), the high-water mark is reset, then a fresh method state, a warm-up step and one step
run twice: the first time includes one-off allocations of the model's first forward at these
shapes, the second is the step's own memory. It uses only `method_speed.time_method`, so the
same file measures an older checkout too, which is how a before/after figure is taken in one
sitting:

    python benchmarks/step_memory.py
    git worktree add /tmp/old <commit> && PYTHONPATH=/tmp/old/src python benchmarks/step_memory.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def main() -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    from method_speed import time_method
    from speed import added_peak_mb, exact_rss

    import dlmi
    from dlmi.model.models import load_model

    exact_rss()
    torch.set_flush_denormal(True)
    lm = load_model("smollm2-135m", device="cpu")
    target = torch.randint(3, lm.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    first = added_peak_mb(lambda: time_method(lm, "dlmi", target, 80, 1, {}))
    again = added_peak_mb(lambda: time_method(lm, "dlmi", target, 80, 1, {}))
    if first is None:
        print("needs Linux (/proc/self/clear_refs)")
        return 1
    print(f"dlmi from {Path(dlmi.__file__).parent}: N = 80 state + warm-up + step adds "
          f"{first:.0f} MB the first time, {again:.0f} MB the second")
    print(json.dumps({"first_mb": round(first), "step_mb": round(again)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
