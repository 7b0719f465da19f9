"""Defences from the article, applied to an exposed next-token distribution before inversion.
Each takes and returns log-probabilities (B, V) that are a normalised distribution again."""

from __future__ import annotations

import torch

DEFENCES = ("temperature", "top_k", "noise")


def temperature_scaled(logprobs: torch.Tensor, T: float) -> torch.Tensor:
    """softmax(log p / T): T > 1 flattens the distribution, T < 1 sharpens it."""
    return (logprobs.float() / T).log_softmax(-1)


def top_k_truncated(logprobs: torch.Tensor, k: int) -> torch.Tensor:
    """Only the k most likely tokens keep their probability (renormalised); the rest get 0."""
    x = logprobs.float()
    keep = x.topk(min(k, x.shape[-1]), dim=-1).indices
    out = torch.full_like(x, float("-inf")).scatter(-1, keep, x.gather(-1, keep))
    return out.log_softmax(-1)


def noised(logprobs: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """Gaussian noise of standard deviation sigma added to the log-probs, renormalised."""
    g = torch.Generator(device=logprobs.device).manual_seed(seed)
    x = logprobs.float()
    noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype) * sigma
    return (x + noise).log_softmax(-1)


def apply(name: str, logprobs: torch.Tensor, value: float, seed: int = 0) -> torch.Tensor:
    if name == "temperature":
        return temperature_scaled(logprobs, value)
    if name == "top_k":
        return top_k_truncated(logprobs, int(value))
    if name == "noise":
        return noised(logprobs, value, seed)
    raise ValueError(f"unknown defence {name!r}")
