"""Float settings a run needs, scoped to the run instead of left on for the whole process."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def subnormals_flushed():
    """Treat subnormal floats as zero for the run only. Tempered softmaxes at low temperature
    produce them, and CPU arithmetic on subnormals is many times slower (measured 2x on a GBDA
    step of the tiny model). torch offers no getter, so the flag goes back to torch's default."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
