"""Adam over parameters whose first axis is the batch of targets.

Same update as torch.optim.Adam (default settings), plus what batched inversion needs: rows
can leave (`keep`) with their moments intact, the state can be reset, and bias correction can
be turned off (SODA, Table 5). Per-element maths means row b's update never depends on row c.
"""

from __future__ import annotations

import torch


class BatchedAdam:
    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999),
                 eps: float = 1e-8, bias_correction: bool = True, weight_decay: float = 0.0,
                 row_second_moment: bool | list[bool] = False):
        self.params = params  # leaf tensors, (B, ...) each
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.bias_correction = bias_correction
        self.weight_decay = weight_decay  # decoupled, as in AdamW (PEZ)
        # One second moment per vector along the last axis (e.g. per prompt position over V)
        # instead of per element: the update keeps the gradient's ranking within the vector,
        # where per-element Adam moves every coordinate by about lr whatever its size.
        # A list gives one flag per parameter.
        self.rows = (list(row_second_moment) if isinstance(row_second_moment, list | tuple)
                     else [row_second_moment] * len(params))
        self.reset()

    def reset(self) -> None:
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p[..., :1] if row else p)
                  for p, row in zip(self.params, self.rows, strict=True)]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1 = 1 - b1**self.t if self.bias_correction else 1.0
        c2 = 1 - b2**self.t if self.bias_correction else 1.0
        for p, m, v, row in zip(self.params, self.m, self.v, self.rows, strict=True):
            if p.grad is None:
                continue
            g = p.grad
            if self.weight_decay:
                p.mul_(1 - self.lr * self.weight_decay)
            m.mul_(b1).add_(g, alpha=1 - b1)
            if row:
                v.mul_(b2).add_(g.square().mean(-1, keepdim=True), alpha=1 - b2)
            else:
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v / c2).sqrt_().add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / c1)

    def keep(self, index: torch.Tensor) -> list[torch.Tensor]:
        """Keep only the rows in `index` (1-D long); returns the new leaf parameters."""
        self.params = [p.detach()[index].clone().requires_grad_(True) for p in self.params]
        self.m = [m[index] for m in self.m]
        self.v = [v[index] for v in self.v]
        return self.params
