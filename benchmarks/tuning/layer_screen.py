"""Whether a copy of the model with fewer layers could screen dlmi-search's swaps on a CPU
without native bfloat16 (where the bfloat16 screen is off): along a default run, every `EVERY`
steps, W swaps of each row's incumbent are scored by the model and by layer subsets of it
(the same weights, shared, not copied), and per row it records the rank correlation of the
two losses, whether the model's best swap is among the subset's 8 best, and the subset's
time relative to the model's (one thread). The control keeps every layer: it must agree with
the model exactly.
Usage: python benchmarks/tuning/layer_screen.py TARGETS.jsonl ID,ID,... OUT.jsonl
"""

import copy
import dataclasses
import json
import sys
import time

import torch
from proposal_hits import OBJECTIVE, search_on  # sibling script

from dlmi.model.dlm import DifferentiableLM

STEPS, EVERY, W = 30, 10, 64


def layer_subset(model: torch.nn.Module, keep: list[int]) -> torch.nn.Module:
    """A Llama-style causal LM that runs only the decoder layers `keep`, sharing the weights."""
    out = copy.copy(model)
    out._modules = dict(model._modules)  # copy.copy shares the module dict: copy it too
    out.model = copy.copy(model.model)
    out.model._modules = dict(model.model._modules)
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = len(keep)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    layers = []
    for j, i in enumerate(keep):  # renumbered, so the KV cache has one slot per kept layer
        layer = copy.copy(model.model.layers[i])
        layer._modules = dict(layer._modules)
        layer.self_attn = copy.copy(layer.self_attn)
        layer.self_attn.layer_idx = j
        layers.append(layer)
    out.model.layers = torch.nn.ModuleList(layers)
    out.config = out.model.config = cfg
    return out


def ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().float()


def main(targets_path: str, ids: list[str], out_path: str) -> None:
    torch.set_num_threads(1)
    dlm, method, batch = search_on(targets_path, ids)
    L = dlm.model.config.num_hidden_layers
    subsets = {"all (control)": list(range(L)), "first-half": list(range(L // 2)),
               "first-two-thirds": list(range(2 * L // 3)),
               "every-other-middle": [i for i in range(L) if i < 4 or i >= L - 4 or i % 2 == 0],
               "no-middle-third": [i for i in range(L) if not L // 3 <= i < 2 * L // 3]}
    lows = {name: DifferentiableLM(dataclasses.replace(dlm.lm, model=layer_subset(dlm.model, k)))
            for name, k in subsets.items()}
    state = method.init_state(batch)
    target, mask = batch.target_ids, batch.mask
    records = []
    for step in range(1, STEPS + 1):
        method.step(state, batch, step)
        if step % EVERY:
            continue
        with torch.no_grad():
            cand, _, _ = method._propose(state, batch, None, W)  # (B, W, N)
            B, _, N = cand.shape
            flat = cand.reshape(B * W, N)
            tw, mw = target.repeat_interleave(W, 0), mask.repeat_interleave(W, 0)
            t0 = time.perf_counter()
            true, _ = dlm.hard_losses(flat, tw, mw, 64, OBJECTIVE)
            full_seconds = time.perf_counter() - t0
            true = true.view(B, W)
            for name, low in lows.items():
                t0 = time.perf_counter()
                est, _ = low.hard_losses(flat, tw, mw, 64, OBJECTIVE)
                cost = (time.perf_counter() - t0) / full_seconds
                est = est.view(B, W)
                for b in range(B):
                    rho = torch.corrcoef(torch.stack([ranks(true[b]), ranks(est[b])]))[0, 1]
                    best = int(true[b].argmin())
                    records.append({"target_id": ids[b], "step": step, "subset": name,
                                    "layers": len(subsets[name]), "rank_corr": round(float(rho), 3),
                                    "best_in_top8": best in est[b].argsort()[:8].tolist(),
                                    "relative_time": round(cost, 3)})
        with open(out_path, "w") as f:  # rewritten at each probe: an interrupted run keeps rows
            f.writelines(json.dumps(r) + "\n" for r in records)
    for name in subsets:
        mine = [r for r in records if r["subset"] == name]
        print(f"{name:20s} rank correlation {sum(r['rank_corr'] for r in mine) / len(mine):+.2f}"
              f"  best swap in its top 8: {sum(r['best_in_top8'] for r in mine)}/{len(mine)}"
              f" (chance {8 / W:.2f})  time {sum(r['relative_time'] for r in mine) / len(mine):.2f}"
              " of the model's")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), sys.argv[3])
