"""Compute accounting: forward/backward passes, tokens and an estimate of matmul FLOPs.

Estimates count the dense matmuls only (2 FLOPs per multiply-add): the transformer blocks,
attention scores, the vocabulary projection at the positions where logits are asked for, and
the soft-embedding product p @ W_E. A backward pass through the frozen model computes input
gradients only (no weight gradients), which costs about one forward, so it is counted as 1x.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ComputeCounter:
    forward_passes: int = 0  # sequences run forward (a batch of B counts B)
    backward_passes: int = 0  # sequences back-propagated
    tokens: int = 0  # token positions processed forward (and again for backward)
    flops: float = 0.0  # estimated matmul FLOPs, forward + backward

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ModelShape:
    """The sizes FLOP estimates need, read off a Hugging Face config."""

    layers: int
    hidden: int
    vocab: int
    block_params: int  # parameters in the transformer blocks (no embeddings, no LM head)

    @classmethod
    def of(cls, model) -> ModelShape:
        cfg = model.config
        layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
        hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings()
        excluded = {id(emb)}
        if head is not None:
            excluded.add(id(head.weight))
        pos = getattr(getattr(model, "transformer", None), "wpe", None)
        if pos is not None:
            excluded.add(id(pos.weight))
        block = sum(p.numel() for p in model.parameters() if id(p) not in excluded and p.dim() > 1)
        return cls(layers=layers, hidden=hidden, vocab=emb.shape[0], block_params=block)

    def forward_flops(self, batch: int, seq_len: int, logit_positions: int,
                      soft_positions: int = 0, cached_len: int = 0) -> float:
        """Matmul FLOPs of one forward over `batch` sequences of `seq_len` new tokens.

        logit_positions: positions per sequence whose vocabulary logits are computed.
        soft_positions: positions per sequence embedded softly (p @ W_E costs 2 V d each).
        cached_len: tokens already in the KV cache that the new ones attend to.
        """
        blocks = 2 * self.block_params * seq_len
        # QK^T and AV: each new token attends to on average cached_len + (seq_len + 1) / 2 keys.
        attention = 4 * self.layers * self.hidden * seq_len * (cached_len + (seq_len + 1) / 2)
        head = 2 * self.hidden * self.vocab * logit_positions
        soft = 2 * self.hidden * self.vocab * soft_positions
        return float(batch * (blocks + attention + head + soft))
