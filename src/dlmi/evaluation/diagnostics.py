"""Gradient diagnostics of the prompt-logit estimators (the paper's Figure 5).

At each of the first optimisation steps, with the parameters frozen at that step:
  variance = max over logits of the variance of R repeated gradient estimates of dL/dZ,
             each estimate drawn exactly as a training step draws it (S samples);
  bias     = max over logits of |mean of the R estimates - reference gradient|, where the
             reference is the gradient of the expected discrete loss E_{x ~ Cat(softmax Z)} L(x),
             estimated without bias by REINFORCE with K samples and a leave-one-out baseline.
The reference is itself noisy, so each bias value comes with its noise floor:
  max over logits of sqrt(var_estimates / R + var_reference / K);
bias values near the floor are indistinguishable from zero. Then the estimator takes its own
training step, so the measurements follow its optimisation trajectory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dlmi.errors import UsageError
from dlmi.methods.base import Batch, row_generators
from dlmi.methods.dlmi_method import DLMI, DLMIConfig
from dlmi.methods.reinforce import Reinforce, ReinforceConfig
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.estimators import gumbel_noise


@dataclass(frozen=True)
class EstimatorSpec:
    kind: str  # gs (fixed tau), learnable (shared), decoupled (per position), reinforce
    tau0: float | None = None

    @property
    def label(self) -> str:
        if self.kind == "reinforce":
            return "REINFORCE"
        name = {"gs": "GS", "learnable": "GS-L", "decoupled": "GS-D"}[self.kind]
        return f"{name}(τ{'' if self.kind == 'gs' else '0'}={self.tau0:g})"


def parse_estimators(text: str) -> list[EstimatorSpec]:
    """'gs:1,gs:100,learnable:1,decoupled:100,reinforce' -> specs."""
    specs = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        kind, _, tau = item.partition(":")
        if kind == "reinforce" and not tau:
            specs.append(EstimatorSpec("reinforce"))
            continue
        if kind not in ("gs", "learnable", "decoupled") or not tau:
            raise UsageError(f"unknown estimator {item!r}: use gs:TAU, learnable:TAU0, "
                             "decoupled:TAU0 or reinforce")
        try:
            specs.append(EstimatorSpec(kind, float(tau)))
        except ValueError:
            raise UsageError(f"estimator {item!r}: temperature must be a number") from None
    if not specs:
        raise UsageError("no estimators given")
    return specs


def _method(spec: EstimatorSpec, dlm: DifferentiableLM, prompt_length: int, samples: int,
            lr: float, seed: int):
    if spec.kind == "reinforce":
        return Reinforce(ReinforceConfig(prompt_length=prompt_length, samples=samples, lr=lr,
                                         seed=seed), dlm)
    temperature = {"gs": "fixed", "learnable": "learnable", "decoupled": "decoupled"}[spec.kind]
    return DLMI(DLMIConfig(prompt_length=prompt_length, samples=samples, lr=lr, seed=seed,
                           tau0=spec.tau0, temperature=temperature), dlm)


def _estimate(method, state, batch: Batch) -> torch.Tensor:
    """One gradient estimate of dL/dZ, (N, V), drawn as a training step would draw it."""
    out = method.surrogate(state, batch)
    (grad,) = torch.autograd.grad(out[0].sum(), state.Z)
    return grad[0]


@torch.no_grad()
def reference_gradient(dlm: DifferentiableLM, Z: torch.Tensor, batch: Batch, samples: int,
                       generator: torch.Generator, chunk: int = 64):
    """Unbiased estimate of d/dZ E_{x ~ Cat(softmax Z)} L(x) and its per-logit variance / K.

    Z: (N, V). REINFORCE with a leave-one-out baseline: g = mean_i (L_i - mean_{j!=i} L_j)
    * grad log p(x_i), where grad_Z[n] log p(x) = onehot(x_n) - softmax(Z[n]).
    """
    N, V = Z.shape
    x = (Z[None] + gumbel_noise((samples, N, V), generator, Z.device)).argmax(-1)  # (K, N)
    L, _ = dlm.hard_losses(x, batch.target_ids.expand(samples, -1),
                           batch.mask.expand(samples, -1), chunk)  # (K,)
    adv = (L - (L.sum() - L) / (samples - 1)) * samples / (samples - 1)  # leave-one-out
    p = torch.softmax(Z, -1)  # (N, V)
    per_sample = torch.zeros(samples, N, V, device=Z.device)
    per_sample.scatter_(2, x[..., None], 1.0)
    per_sample = (per_sample - p[None]) * adv[:, None, None]  # (K, N, V)
    return per_sample.mean(0), per_sample.var(0) / samples


def diagnose(lm, target_ids: list[int], estimators: list[EstimatorSpec], steps: int = 8,
             repeats: int = 8, reference_samples: int = 256, prompt_length: int = 10,
             samples: int = 8, lr: float = 0.1, seeds: tuple[int, ...] = (0,),
             on_row=None) -> list[dict]:
    """Rows of {estimator, seed, step, max_variance, max_bias, bias_noise_floor}."""
    if repeats < 2 or reference_samples < 2 or steps < 1:
        raise UsageError("need --repeats >= 2, --reference-samples >= 2 and --steps >= 1")
    dlm = DifferentiableLM(lm)
    target = torch.tensor([target_ids], device=dlm.device)
    mask = dlm.target_mask(target, torch.tensor([len(target_ids)], device=dlm.device))
    rows = []
    for spec in estimators:
        for seed in seeds:
            batch = Batch(target, mask, row_generators([seed], dlm.device))
            method = _method(spec, dlm, prompt_length, samples, lr, seed)
            state = method.init_state(batch)
            ref_gen = torch.Generator(device=dlm.device).manual_seed(10_000 + seed)
            for step in range(1, steps + 1):
                G = torch.stack([_estimate(method, state, batch) for _ in range(repeats)])
                ref, ref_var = reference_gradient(dlm, state.Z.detach()[0], batch,
                                                  reference_samples, ref_gen)
                mean = G.mean(0)
                var = G.var(0)
                row = {
                    "estimator": spec.label, "seed": seed, "step": step,
                    "max_variance": var.max().item(),
                    "max_bias": (mean - ref).abs().max().item(),
                    "bias_noise_floor": (var / repeats + ref_var).sqrt().max().item(),
                }
                rows.append(row)
                if on_row:
                    on_row(row)
                method.step(state, batch, step)
    return rows


def plot_diagnostics(rows: list[dict], out_dir) -> list:
    """Violin plots of log10 max variance and log10 max bias per estimator (Figure 5)."""
    from dlmi.evaluation.plots import pyplot, save_figure

    plt = pyplot()
    labels = list(dict.fromkeys(r["estimator"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.6 * len(labels)), 4.2))
    for ax, key, title in ((axes[0], "max_variance", "max gradient variance"),
                           (axes[1], "max_bias", "max gradient bias")):
        data = [[math.log10(max(r[key], 1e-30)) for r in rows if r["estimator"] == lab]
                for lab in labels]
        ax.violinplot(data, showmeans=True, showextrema=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=20)
        ax.set_ylabel(f"log10 {title}")
        ax.set_title(f"{title} over logits, per step and seed")
        ax.grid(alpha=0.3)
    floor = [math.log10(max(r["bias_noise_floor"], 1e-30)) for r in rows]
    axes[1].axhline(sum(floor) / len(floor), color="grey", ls="--", lw=1,
                    label="mean noise floor of the bias estimate")
    axes[1].legend(fontsize=8)
    fig.suptitle("Gradient estimators of the prompt logits: variance and bias")
    return save_figure(fig, out_dir, "gradient_diagnostics", top=0.93)
