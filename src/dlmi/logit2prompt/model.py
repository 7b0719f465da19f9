"""The inverter: a distribution unrolled into pseudo-embeddings, read by a T5 encoder-decoder
that writes the prompt in the subject model's own tokens.

Unrolling (Morris et al. 2023): the log-probability vector (V,) is clamped at a floor,
optionally centred by a running average of the training distributions, zero-padded to a
multiple of the encoder width d and cut into S = ceil(V / d) chunks; each chunk (d,) goes
through a small MLP to one encoder input (d,). Shapes: B rows, V vocabulary, d width, S chunks.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from dlmi.errors import UsageError

FLOOR = -30.0  # log-probs below this carry no information worth the scale they add


@dataclass
class InverterConfig:
    vocab_size: int  # the subject model's vocabulary: inputs and the decoder's outputs
    d_model: int = 256
    layers: int = 4
    heads: int = 4
    d_ff: int = 1024
    max_prompt_tokens: int = 32
    centre: bool = True  # subtract the running average distribution before unrolling
    pad_id: int = 0  # decoder start and padding (the subject tokenizer's pad, else 0)
    eos_id: int = 1  # end of the written prompt
    pretrained: str | None = None  # a local T5 checkpoint to start from, if any

    @property
    def chunks(self) -> int:
        return math.ceil(self.vocab_size / self.d_model)


class Unroller(nn.Module):
    """(B, V) log-probs -> (B, S, d) pseudo-embeddings."""

    def __init__(self, cfg: InverterConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.register_buffer("mean", torch.zeros(cfg.vocab_size))
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def observe(self, logprobs: torch.Tensor) -> None:
        """Update the running average with a training batch (B, V)."""
        x = logprobs.float().clamp_min(FLOOR)
        n = self.seen.item()
        self.mean.mul_(n / (n + len(x))).add_(x.sum(0) / (n + len(x)))
        self.seen += len(x)

    def forward(self, logprobs: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        x = logprobs.float().clamp_min(FLOOR)  # (B, V)
        if cfg.centre:
            x = x - self.mean
        x = x / -FLOOR  # about unit scale
        pad = cfg.chunks * cfg.d_model - cfg.vocab_size
        x = nn.functional.pad(x, (0, pad))  # (B, S * d)
        return self.mlp(x.view(x.shape[0], cfg.chunks, cfg.d_model))  # (B, S, d)


class Logit2Prompt(nn.Module):
    def __init__(self, cfg: InverterConfig):
        super().__init__()
        from transformers import T5Config, T5ForConditionalGeneration

        self.cfg = cfg
        if cfg.pretrained:
            t5 = T5ForConditionalGeneration.from_pretrained(cfg.pretrained)
            t5.resize_token_embeddings(cfg.vocab_size)
            if t5.config.d_model != cfg.d_model:
                raise UsageError(f"the T5 checkpoint has width {t5.config.d_model}: set "
                                 f"--width {t5.config.d_model}")
        else:
            t5 = T5ForConditionalGeneration(T5Config(
                vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_model // cfg.heads,
                d_ff=cfg.d_ff, num_layers=cfg.layers, num_decoder_layers=cfg.layers,
                num_heads=cfg.heads, dropout_rate=0.0, pad_token_id=cfg.pad_id,
                eos_token_id=cfg.eos_id, decoder_start_token_id=cfg.pad_id,
                tie_word_embeddings=False))
        self.t5 = t5
        self.unroll = Unroller(cfg)

    def loss(self, logprobs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy of the prompt tokens. labels (B, T), -100 = padding."""
        return self.t5(inputs_embeds=self.unroll(logprobs), labels=labels).loss

    @torch.no_grad()
    def write(self, logprobs: torch.Tensor, beams: int = 4, candidates: int = 4
              ) -> list[list[list[int]]]:
        """Beam search: for each row, `candidates` prompts (token ids), best first."""
        out = self.t5.generate(inputs_embeds=self.unroll(logprobs), num_beams=beams,
                               num_return_sequences=min(candidates, beams),
                               max_new_tokens=self.cfg.max_prompt_tokens, do_sample=False)
        k = min(candidates, beams)
        rows = []
        for b in range(logprobs.shape[0]):
            rows.append([_strip(seq.tolist(), self.cfg) for seq in out[b * k:(b + 1) * k]])
        return rows

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "inverter.json").write_text(json.dumps(asdict(self.cfg), indent=1) + "\n")
        torch.save(self.state_dict(), folder / "inverter.pt")

    @classmethod
    def load(cls, folder: str | Path, device="cpu") -> Logit2Prompt:
        folder = check_checkpoint(folder)
        cfg = InverterConfig(**json.loads((folder / "inverter.json").read_text()))
        cfg.pretrained = None  # the weights below hold everything
        model = cls(cfg)
        model.load_state_dict(torch.load(folder / "inverter.pt", map_location=device,
                                         weights_only=True))
        return model.to(device).eval()


def check_checkpoint(folder: str | Path) -> Path:
    folder = Path(folder)
    if not (folder / "inverter.json").is_file() or not (folder / "inverter.pt").is_file():
        raise UsageError(f"{folder} is not a logit2prompt checkpoint (inverter.json and "
                         "inverter.pt): train one with `dlmi l2p train`")
    return folder


def _strip(ids: list[int], cfg: InverterConfig) -> list[int]:
    """Generated ids without the decoder start, up to the first end token."""
    if ids and ids[0] == cfg.pad_id:
        ids = ids[1:]
    if cfg.eos_id in ids:
        ids = ids[: ids.index(cfg.eos_id)]
    return [t for t in ids if t != cfg.pad_id]
