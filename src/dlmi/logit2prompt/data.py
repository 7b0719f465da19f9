"""Collected data: each prompt's next-token log-probabilities from the subject model.

A data folder holds `meta.json` (model, vocabulary size, shard size) and shards
`shard-NNNNN.pt`, each {"prompts": [text], "prompt_ids": [[id]], "logprobs": (n, V) float16},
written whole (temporary file renamed), so a killed run keeps every finished shard and a rerun
continues after them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from dlmi.errors import UsageError
from dlmi.files import read_text

META = "meta.json"


def shard_paths(folder: Path) -> list[Path]:
    return sorted(folder.glob("shard-*.pt"))


def read_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    if not (folder / META).is_file():
        raise UsageError(f"{folder} is not a logit2prompt data folder (no {META}): "
                         "make one with `dlmi l2p collect`")
    return json.loads((folder / META).read_text(encoding="utf-8"))


def load_shards(folder: str | Path) -> tuple[list[list[int]], torch.Tensor]:
    """Every collected (prompt ids, log-probs (n, V) float16) in order."""
    folder = Path(folder)
    read_meta(folder)
    ids, rows = [], []
    for path in shard_paths(folder):
        shard = torch.load(path, weights_only=True)
        ids.extend(shard["prompt_ids"])
        rows.append(shard["logprobs"])
    if not rows:
        raise UsageError(f"{folder} holds no collected prompts yet")
    return ids, torch.cat(rows)


@torch.no_grad()
def next_token_logprobs(lm, prompt_ids: Sequence[Sequence[int]], batch: int = 32) -> torch.Tensor:
    """log p(next token | prompt) over the full vocabulary: (n, V) float32. Prompts of one
    batch are left-padded (attention mask and positions), so each is scored as if alone."""
    out = []
    for i in range(0, len(prompt_ids), batch):
        part = [list(p) for p in prompt_ids[i:i + batch]]
        L = max(map(len, part))
        ids = torch.zeros(len(part), L, dtype=torch.long)
        mask = torch.zeros(len(part), L, dtype=torch.long)
        for j, p in enumerate(part):
            ids[j, L - len(p):] = torch.tensor(p)
            mask[j, L - len(p):] = 1
        ids, mask = ids.to(lm.device), mask.to(lm.device)
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                          logits_to_keep=1).logits[:, -1]
        out.append(logits.float().log_softmax(-1).cpu())
    return torch.cat(out)


def read_prompts(path: str | Path) -> list[str]:
    """A prompts file: one prompt per line, or JSONL rows with "text" (or "prompt")."""
    lines = [ln for ln in read_text(path, "prompts file").splitlines() if ln.strip()]
    prompts = []
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{number}: not JSON ({exc.msg})") from None
            text = row.get("text", row.get("prompt")) if isinstance(row, dict) else None
            if not isinstance(text, str) or not text:
                raise UsageError(f"{path}:{number}: a JSONL row needs a non-empty 'text'")
            prompts.append(text)
        else:
            prompts.append(line)
    if not prompts:
        raise UsageError(f"prompts file {path} has no prompts")
    return prompts


@torch.no_grad()
def generate_prompts(lm, count: int, seed: int, min_len: int = 4, max_len: int = 12,
                     batch: int = 64) -> list[str]:
    """`count` prompts sampled from the subject model itself (temperature 1, after BoS),
    lengths uniform in [min_len, max_len] tokens: data when a user has none. Batched, with
    the KV cache; the caller's random state is left as it was."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (count,), generator=g).tolist()
    start = lm.bos_token_id if lm.bos_token_id is not None else lm.eos_token_id
    prompts = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, count, batch):
            n = min(batch, count - i)
            ids = torch.full((n, 1), start, dtype=torch.long, device=lm.device)
            out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                    temperature=1.0, top_k=0, top_p=1.0,
                                    max_new_tokens=max_len, min_new_tokens=max_len,
                                    pad_token_id=start)
            for j in range(n):
                prompts.append(lm.decode(out[j, 1: 1 + lengths[i + j]].tolist()))
    return prompts


def collect(lm, prompts: Sequence[str], folder: str | Path, shard_size: int = 256,
            on_shard: Callable[[int, int], None] | None = None) -> int:
    """Write the log-probs of every prompt not yet collected; returns how many are in the
    folder. A folder made for another model or shard size is refused."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"model": lm.spec, "vocab_size": lm.vocab_size, "shard_size": shard_size}
    if (folder / META).is_file():
        old = read_meta(folder)
        if (old["model"], old["vocab_size"], old["shard_size"]) != (
                meta["model"], meta["vocab_size"], meta["shard_size"]):
            raise UsageError(f"{folder} was collected with model {old['model']} and shard "
                             f"size {old['shard_size']}: use another --out or the same settings")
    else:
        _write_whole(folder / META, json.dumps(meta, indent=1).encode())
    # Finished shards are kept; a short last shard means the previous run finished.
    done = min(len(shard_paths(folder)) * shard_size, len(prompts))
    for start in range(done, len(prompts), shard_size):
        part = list(prompts[start:start + shard_size])
        ids = [lm.encode(p) or [lm.bos_token_id or 0] for p in part]
        logprobs = next_token_logprobs(lm, ids)
        shard = {"prompts": part, "prompt_ids": ids, "logprobs": logprobs.half()}
        tmp = folder / f".shard-{start // shard_size:05d}.pt.tmp{os.getpid()}"
        torch.save(shard, tmp)
        tmp.replace(folder / f"shard-{start // shard_size:05d}.pt")
        if on_shard:
            on_shard(min(start + shard_size, len(prompts)), len(prompts))
    return len(prompts)


def _write_whole(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)
