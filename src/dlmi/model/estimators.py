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
    out = torch.empty(shape, device=device, dtype=dtype or torch.float32)
    return fill_gumbel_(out, generator)


def fill_gumbel_(out: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Overwrite `out` with Gumbel(0, 1) samples in place: no temporaries, and the same numbers
    as gumbel_noise(out.shape, generator) (uniform_ draws what torch.rand draws)."""
    finfo = torch.finfo(out.dtype)
    out.uniform_(0.0, 1.0, generator=generator).clamp_(finfo.tiny, 1.0 - finfo.eps)
    return out.log_().neg_().log_().neg_()


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


# Rows of p whose gradient the sampler's backward makes at once (see its backward).
CHUNK_ROWS = 128


class _SampledGumbelSoftmax(torch.autograd.Function):
    """S Gumbel-Softmax samples of every row's logits, with a hand-written backward; with an
    embedding matrix W, their embeddings p @ W instead of p.

    Why: autograd's version keeps the noise, Z + noise, its scaled copy and the softmax, each
    B x S x N x V floats (126 MB at S = 8, N = 80), and more for the straight-through sum. Here
    the noise is drawn in place into one buffer that becomes the softmax input, only the
    softmax y is saved, and the backward works a few samples at a time. With W, the gradient
    w.r.t. p (another B x S x N x V) is made a few samples at a time too, and a straight-through
    forward is an embedding lookup instead of a one-hot product.
    """

    @staticmethod
    def forward(ctx, Z, tau, generators, samples, hard, anchor, W):
        # Z (B, N, V), tau (B, N) > 0, anchor (B, N) or None, W (V, d) or None.
        B, N, V = Z.shape
        x = torch.empty(B, samples, N, V, device=Z.device, dtype=Z.dtype)
        for b, g in enumerate(generators):  # row b's noise from row b's generator only
            fill_gumbel_(x[b], g)
        x.add_(Z[:, None])
        index = x.argmax(-1)  # (B, S, N): argmax(Z + g), the hard sample
        if anchor is not None:
            index[:, 0] = anchor
        y = torch.softmax(x.div_(tau[:, None, :, None]), -1)  # (B, S, N, V)
        del x
        ctx.save_for_backward(y, tau, W)
        ctx.mark_non_differentiable(index)
        if W is not None:
            embeds = W[index] if hard else y.to(W.dtype) @ W  # (B, S, N, d)
            return embeds, index
        if not hard:
            return y, index
        return torch.zeros_like(y).scatter_(-1, index[..., None], 1.0), index

    @staticmethod
    def backward(ctx, grad_out, _grad_index):
        # d softmax: dx = y * (grad - <grad, y>), x = (Z + g) / tau, so dZ = sum_s dx / tau and
        # dtau = -sum_s <dx, x> / tau. <dx, x> = <dx, log y> because x and log y differ by a
        # constant per (b, s, n) and dx sums to zero over V. Where y underflowed to 0, dx is 0
        # too, and log y is clamped to a finite value so 0 * log y stays 0.
        y, tau, W = ctx.saved_tensors
        B, S, N, V = y.shape
        tiny = torch.finfo(y.dtype).tiny
        dZ = torch.zeros(B, N, V, device=y.device, dtype=y.dtype)
        dtau = torch.zeros(B, N, device=y.device, dtype=y.dtype)

        def dot(a, b):  # (..., V) x2 -> (..., 1), as a batched matmul: no V-sized product
            return (a.reshape(-1, 1, V) @ b.reshape(-1, V, 1)).view(*a.shape[:-1], 1)

        # A few samples at a time: temporaries of about CHUNK_ROWS x V, not B x S x N x V.
        # Not one sample at a time: each product with W.T reads all of W (113 MB for the
        # default model), measured 25 ms for 10 rows, 40 ms for 80.
        k = max(1, min(S, -(-CHUNK_ROWS // (B * N))))
        for s in range(0, S, k):
            ys = y[:, s:s + k]  # (B, k, N, V)
            gs = grad_out[:, s:s + k]  # the gradient w.r.t. these samples of p
            if W is not None:
                gs = (gs.reshape(-1, W.shape[1]) @ W.T).view(ys.shape).to(y.dtype)
            dx = (gs - dot(gs, ys)).mul_(ys)  # (B, k, N, V)
            dtau -= dot(dx, ys.clamp_min(tiny).log_())[..., 0].sum(1)
            dZ += dx.sum(1)
        dZ /= tau[..., None]
        return dZ, dtau / tau, None, None, None, None, None


def sample_gumbel_softmax(
    Z: torch.Tensor, tau: torch.Tensor, generators: list, samples: int, hard: bool = False,
    anchor: torch.Tensor | None = None, embed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`samples` relaxed one-hot draws p = softmax((Z + g) / tau) per row, and their hard
    tokens.

    Z: (B, N, V) logits; tau: (B, N) temperatures; generators: one per row (row b's noise is
    gumbel_noise((S, N, V), generators[b])). hard: straight-through, one-hot forward and the
    relaxed gradient backward. anchor (B, N): sample 0's hard tokens (and, with hard, its
    forward value) are these instead of its argmax. embed (V, d): return the embeddings
    p @ embed (B, S, N, d) instead of p (B, S, N, V), with no V-sized gradient kept. Returns
    that and the hard tokens (B, S, N), argmax(Z + g) but for the anchor.
    """
    return _SampledGumbelSoftmax.apply(Z, tau, generators, samples, hard, anchor, embed)
