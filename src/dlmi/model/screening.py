"""Screening swap candidates in a lower precision: every candidate is scored by a bfloat16 (or
float16) copy of the model, and only the few best per base prompt are scored again by the model
itself, whose loss and exact-match proof are the only ones a method keeps.

Why: scoring candidates is nine tenths of a dlmi-search step on CPU, and a CPU with AMX (or a
GPU) runs a bfloat16 forward about twice as fast as a float32 one: with the kept few scored
twice, 32 swaps per row score 1.4x faster, 128 swaps 2x (benchmarks/screening.py).
bfloat16 losses are close (mean absolute difference about 0.02 nats) but not close enough to
prove anything, so the model's own precision decides what is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlmi.errors import UsageError
from dlmi.model.objective import CROSS_ENTROPY, Objective

SCREENS = ("off", "auto", "bfloat16", "float16")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def fast_bfloat16(device: torch.device) -> bool:
    """Whether `device` runs bfloat16 matmuls natively (a CUDA GPU that supports them, a CPU
    with AMX or AVX512-BF16); elsewhere bfloat16 is emulated and slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:  # a private table of CPU features; without it, assume no native bfloat16
        caps = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):
        return False
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def screen_dtype(screen: str, model_dtype: torch.dtype, device: torch.device
                 ) -> torch.dtype | None:
    """The dtype candidates are screened in, or None for no screening: `auto` is bfloat16
    where it runs natively and the model is in float32; a dtype that is the model's own
    screens nothing."""
    check_screen(screen)
    if screen == "off":
        return None
    if screen == "auto":
        if model_dtype != torch.float32 or not fast_bfloat16(device):
            return None
        return torch.bfloat16
    dtype = DTYPES[screen]
    return None if dtype == model_dtype else dtype


def best_per_group(loss: torch.Tensor, groups: torch.Tensor, keep: int) -> torch.Tensor:
    """loss (R,), groups (R,) ids -> (R,) bool: the `keep` lowest losses of each group (ties:
    the earlier index)."""
    R = loss.shape[0]
    order = loss.argsort(stable=True)
    order = order[groups[order].argsort(stable=True)]  # by group, then by loss
    counts = torch.bincount(groups, minlength=int(groups.max()) + 1 if R else 0)
    starts = counts.cumsum(0) - counts  # (G,) where each group begins in `order`
    rank = torch.empty(R, dtype=torch.long, device=loss.device)
    rank[order] = torch.arange(R, device=loss.device) - starts[groups[order]]
    return rank < keep


@dataclass
class Screened:
    loss: torch.Tensor  # (R,) the model's own loss where kept, +inf where screened out
    exact: torch.Tensor  # (R,) bool: proven by the model itself (never where screened out)
    kept: torch.Tensor  # (R,) bool: scored again by the model
    # (R,) the screen's loss of the candidate's base minus its loss of the candidate: the
    # gain it estimates (None without verdicts).
    gain: torch.Tensor | None

    @property
    def no_gain(self) -> torch.Tensor | None:
        """(R,) bool: the screen scored it no better than its base (None without verdicts)."""
        return None if self.gain is None else self.gain <= 0


def screened_variant_losses(dlm, low, base_ids: torch.Tensor, cand_ids: torch.Tensor,
                            rows: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor,
                            keep: int, chunk: int = 64,
                            objective: Objective = CROSS_ENTROPY,
                            verdicts: bool = True) -> Screened:
    """dlm.variant_losses of the candidates the screen `low` (the same model in a lower
    precision, dlm.lowered) ranks among the `keep` best variants of each base, or proves
    exact in its own precision. base_ids (B, N); cand_ids (R, N), variants of
    base_ids[rows] (rows (R,)); target_ids, mask (B, M). `verdicts`: also score the bases in
    the screen's precision for gain and no_gain (else None), one more forward per base."""
    low_loss, low_exact = low.variant_losses(base_ids, cand_ids, rows, target_ids, mask,
                                             chunk, objective)  # (R,) x2
    kept = best_per_group(low_loss, rows, keep) | low_exact
    loss = torch.full_like(low_loss, float("inf"))
    exact = torch.zeros_like(low_exact)
    if bool(kept.any()):
        loss[kept], exact[kept] = dlm.variant_losses(
            base_ids, cand_ids[kept], rows[kept], target_ids, mask, chunk, objective)
    gain = None
    if verdicts:
        low_base, _ = low.hard_losses(base_ids, target_ids, mask, chunk, objective)  # (B,)
        gain = low_base[rows] - low_loss
    return Screened(loss, exact, kept, gain)


def screen_model(dlm, screen: str):
    """The lowered copy of dlm that `screen` asks for (see screen_dtype), or None."""
    dtype = screen_dtype(screen, dlm.W_E.dtype, dlm.device)
    return None if dtype is None else dlm.lowered(dtype)


def check_screen(screen: str) -> None:
    """A one-line error for a screen option that is not one of SCREENS."""
    if screen not in SCREENS:
        raise UsageError(f"screen must be one of {', '.join(SCREENS)}, got {screen!r}: "
                         "change --set screen=VALUE")
