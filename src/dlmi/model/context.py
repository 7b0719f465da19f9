"""Fixed tokens around the learnable span: the context a prompt is optimised in.

Inversion is one pair with fixed text before the span (an optional prefix) and none after.
Prompt tuning over a data set is K pairs: pair k reads `before[k] + prompt + after[k]` and is
scored on its own output. One prompt row then stands for all K pairs, and its target is the K
outputs laid end to end, each padded to the same length M, so the target of a row is (K * M)
tokens and every method, the runner and the exact-match proof work on pairs unchanged: a row
is exact when every pair is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpanContext:
    before: tuple[tuple[int, ...], ...]  # K pairs of fixed ids before the span
    after: tuple[tuple[int, ...], ...]  # K pairs of fixed ids between span and output
    # Tokens of each pair's output (K,), when pairs' outputs are padded to one length M:
    # positions past it are neither scored nor decoded. None: one pair, scored by the target.
    output_lengths: tuple[int, ...] | None = None

    def __post_init__(self):
        if not self.before or len(self.before) != len(self.after):
            raise ValueError("a context needs one `before` and one `after` per pair")
        if self.output_lengths is not None and len(self.output_lengths) != len(self.before):
            raise ValueError("a context needs one output length per pair")

    @classmethod
    def single(cls, before=(), after=()) -> SpanContext:
        return cls((tuple(int(t) for t in before),), (tuple(int(t) for t in after),))

    @classmethod
    def of_pairs(cls, pairs, output_lengths=None) -> SpanContext:
        """pairs: iterable of (before ids, after ids); output_lengths: one per pair."""
        pairs = list(pairs)
        return cls(tuple(tuple(int(t) for t in b) for b, _ in pairs),
                   tuple(tuple(int(t) for t in a) for _, a in pairs),
                   None if output_lengths is None else tuple(int(n) for n in output_lengths))

    def subset(self, index: list[int]) -> SpanContext:
        """The context of the pairs at `index` only."""
        lengths = self.output_lengths
        return SpanContext(tuple(self.before[i] for i in index),
                           tuple(self.after[i] for i in index),
                           None if lengths is None else tuple(lengths[i] for i in index))

    @property
    def pairs(self) -> int:
        return len(self.before)

    def longest(self) -> int:
        """Fixed tokens of the longest pair (before + after)."""
        return max(len(b) + len(a) for b, a in zip(self.before, self.after, strict=True))

    def shared_prefix(self) -> int:
        """Tokens at the start of `before` that every pair has in common."""
        first = self.before[0]
        n = min(len(b) for b in self.before)
        for b in self.before[1:]:
            n = next((i for i in range(n) if b[i] != first[i]), n)
        return n

    def layout(self, n: int, tail: int, device, shared: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Where each piece of pair k goes in padded sequences of one length L.

        n: span length, tail: tokens after `after` (target tokens fed in). Returns
        fixed_ids (K, L) (pads 0), kind (K, L) long: 0 pad, 1 fixed, 2 span, 3 tail, and L.
        Padding goes on the left, so every pair's target is at the same (last) positions; with
        `shared` (at most shared_prefix()) it goes after the first `shared` tokens instead, so
        those stay at the same positions in every sequence (one KV cache serves them all).
        """
        lengths = [len(b) + n + len(a) + tail for b, a in zip(self.before, self.after,
                                                               strict=True)]
        L = max(lengths)
        K = self.pairs
        fixed = torch.zeros(K, L, dtype=torch.long)
        kind = torch.zeros(K, L, dtype=torch.long)
        for k, (b, a) in enumerate(zip(self.before, self.after, strict=True)):
            if shared:
                fixed[k, :shared] = torch.tensor(b[:shared], dtype=torch.long)
                kind[k, :shared] = 1
            start = shared + L - lengths[k]
            pieces = ((b[shared:], 1), ((0,) * n, 2), (a, 1), ((0,) * tail, 3))
            for ids, code in pieces:
                end = start + len(ids)
                if ids:
                    fixed[k, start:end] = torch.tensor(ids, dtype=torch.long)
                kind[k, start:end] = code
                start = end
        return fixed.to(device), kind.to(device), L
