"""Training the inverter: AdamW on teacher-forced prompt tokens, periodic held-out evaluation,
checkpoints every `save_every` steps (model, optimiser, step, data order), and resume from the
last checkpoint after an interruption. Mixed precision (bfloat16 autocast) on CUDA."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from dlmi.errors import UsageError
from dlmi.logit2prompt.data import load_shards, read_meta
from dlmi.logit2prompt.model import InverterConfig, Logit2Prompt

log = logging.getLogger(__name__)
STATE = "trainer.pt"


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    eval_every: int = 200
    save_every: int = 200
    held_out: float = 0.05  # share of the data kept out of training (the last rows)
    seed: int = 0


def split(n: int, held_out: float) -> tuple[range, range]:
    """Training rows first, the last `held_out` share for evaluation (at least one row)."""
    k = max(1, int(round(n * held_out))) if n > 1 else 0
    return range(0, n - k), range(n - k, n)


def labels_of(prompt_ids: list[list[int]], cfg: InverterConfig) -> torch.Tensor:
    """(B, T) targets: each prompt, truncated, then EoS; padding -100."""
    rows = [p[: cfg.max_prompt_tokens - 1] + [cfg.eos_id] for p in prompt_ids]
    T = max(map(len, rows))
    out = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def train(data: str | Path, out: str | Path, cfg: TrainConfig, lm, width: int = 256,
          layers: int = 4, pretrained: str | None = None, device: str | None = None,
          callback: Callable[[int, float], None] | None = None) -> dict:
    """Train (or resume) an inverter on a collected data folder; checkpoints go to `out`.
    Returns {"step", "train_loss", "eval_loss"} of the last step."""
    meta = read_meta(data)
    if meta["vocab_size"] != lm.vocab_size:
        raise UsageError(f"{data} was collected from a model with {meta['vocab_size']} tokens, "
                         f"this one has {lm.vocab_size}: use the same --model")
    ids, logprobs = load_shards(data)
    train_rows, eval_rows = split(len(ids), cfg.held_out)
    if not train_rows:
        raise UsageError(f"{data} has too few prompts to train on: collect more")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(out)
    resumed = (out / STATE).is_file()
    if resumed:
        model = Logit2Prompt.load(out, dev).train()
        state = torch.load(out / STATE, map_location=dev, weights_only=False)
    else:
        icfg = InverterConfig(
            vocab_size=lm.vocab_size, d_model=width, layers=layers, d_ff=4 * width,
            heads=max(1, width // 64), pretrained=pretrained,
            pad_id=lm.tokenizer.pad_token_id or 0,
            eos_id=lm.eos_token_id if lm.eos_token_id is not None else 1)
        with torch.random.fork_rng(devices=[]):  # a seeded start, the caller's RNG untouched
            torch.manual_seed(cfg.seed)
            model = Logit2Prompt(icfg).to(dev).train()
        for i in range(0, len(train_rows), 256):  # the running average of the training data
            model.unroll.observe(logprobs[i: min(i + 256, train_rows.stop)].to(dev))
        state = {"step": 0, "optimizer": None}
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    if state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    step = state["step"]
    if resumed:
        log.info("resuming from step %d in %s", step, out)
    amp = dev.type == "cuda"
    result = {"step": step, "train_loss": None, "eval_loss": None}
    per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    while step < cfg.steps:
        # The batch is a function of the step alone, so a resumed run sees the same data.
        epoch, k = divmod(step, per_epoch)
        order = torch.randperm(len(train_rows),
                               generator=torch.Generator().manual_seed(cfg.seed + epoch))
        rows = order[k * cfg.batch_size:(k + 1) * cfg.batch_size].tolist()
        x = logprobs[rows].to(dev)
        y = labels_of([ids[r] for r in rows], model.cfg).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = model.loss(x, y)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        loss = float(loss.detach())
        result.update(step=step, train_loss=loss)
        if callback:
            callback(step, loss)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            result["eval_loss"] = evaluate_loss(model, ids, logprobs, eval_rows, dev)
            log.info("step %d: train loss %.3f, held-out loss %.3f", step, loss,
                     result["eval_loss"])
        if step % cfg.save_every == 0 or step == cfg.steps:
            save_checkpoint(model, optimizer, step, out, result)
    return result


@torch.no_grad()
def evaluate_loss(model: Logit2Prompt, ids, logprobs, rows: range, dev) -> float:
    if not rows:
        return float("nan")
    model.eval()
    losses = []
    for i in range(rows.start, rows.stop, 64):
        part = list(range(i, min(i + 64, rows.stop)))
        losses.append(float(model.loss(logprobs[part].to(dev),
                                       labels_of([ids[r] for r in part], model.cfg).to(dev))))
    model.train()
    return sum(losses) / len(losses)


def save_checkpoint(model, optimizer, step: int, out: Path, result: dict) -> None:
    """Whole or not at all: written into a fresh folder, then swapped in."""
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save(tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict()}, tmp / STATE)
    (tmp / "progress.json").write_text(json.dumps(result) + "\n")
    if out.exists():
        old = out.with_name(out.name + f".old{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
