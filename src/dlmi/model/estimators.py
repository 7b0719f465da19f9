"""Gumbel-Softmax over learnable logits, with fixed, learnable or decoupled temperatures.

The learnable temperature follows the paper (Section 3.3): tau = eps + tau0 * (1 + tanh(phi)),
so tau stays inside (eps, eps + 2 * tau0) whatever phi does. "decoupled" learns one phi per
prompt position, "learnable" one per target, "fixed" none (tau = tau0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TEMPERATURE_MODES = ("fixed", "learnable", "decoupled")


def gumbel_noise(
    shape: tuple[int, ...], generator: torch.Generator | None = None, device=None, dtype=None
) -> torch.Tensor:
    """Gumbel(0, 1) samples, -log(-log U), with U kept strictly inside (0, 1) so no log(0)."""
    dtype = dtype or torch.float32
    u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    u = u.clamp_(tiny, 1.0 - torch.finfo(dtype).eps)
    return -torch.log(-torch.log(u))


def effective_temperature(phi: torch.Tensor, tau0: float, eps: float) -> torch.Tensor:
    """tau = eps + tau0 * (1 + tanh(phi)); phi of any shape, tau of the same shape."""
    return eps + tau0 * (1.0 + torch.tanh(phi))


def gumbel_softmax(
    logits: torch.Tensor, tau: torch.Tensor | float, noise: torch.Tensor, hard: bool = False
) -> torch.Tensor:
    """Relaxed one-hot samples softmax((Z + g) / tau).

    logits: (..., V); noise: same shape; tau broadcastable to (..., 1).
    hard: straight-through, one-hot of the argmax forward and the relaxed gradient backward.
    """
    soft = F.softmax((logits + noise) / tau, dim=-1)
    if not hard:
        return soft
    index = soft.argmax(dim=-1, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(-1, index, 1.0)
    return one_hot - soft.detach() + soft
