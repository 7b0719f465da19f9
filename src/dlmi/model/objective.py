"""The loss a search ranks hard prompts by, and the proof that one is exact.

Every function reads teacher-forced logits (R, M, V) of R prompts over M target positions
(V the vocabulary) with a mask (R, M) of the positions scored, and gives one value per row.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from dlmi.errors import UsageError


def won_positions(argmax: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor
                  ) -> torch.Tensor:
    """Target positions whose teacher-forced argmax (R, M) is the target token, unscored ones
    (mask (R, M) False) counted as won: (R, M) bool."""
    return (argmax == target_ids) | ~mask.bool()


def target_and_rival(logits: torch.Tensor, target_ids: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The target token's logit and the best other token's logit, in float32: logits
    (R, M, V), target_ids (R, M) -> 2 x (R, M).

    One top-2 pass over the vocabulary, without a copy of the logits: the rival is the
    runner-up where the target is on top, else the top. Scoring the swaps' logits this way
    is about 4x faster on a CPU than a masked copy, its max and two argmaxes."""
    top, index = logits.topk(2, dim=-1)  # (R, M, 2)
    target = logits.gather(-1, target_ids[..., None])[..., 0]
    rival = torch.where(index[..., 0] == target_ids, top[..., 1], top[..., 0])
    return target.float(), rival.float()


def strictly_won(target: torch.Tensor, rival: torch.Tensor, mask: torch.Tensor
                 ) -> torch.Tensor:
    """Positions whose target logit beats every other (target_and_rival's (R, M) pair), so
    greedy decoding picks the target token whatever the tie rule, unscored ones (mask False)
    counted as won: (R, M) bool. A tie counts as lost: the proof stays on the safe side."""
    return (target > rival) | ~mask.bool()


def proven_exact(logits: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor
                 ) -> torch.Tensor:
    """Teacher-forced logits (R, M, V) whose target token beats every other at every scored
    position (mask (R, M)): greedy decoding then reproduces the target. -> (R,) bool."""
    return strictly_won(*target_and_rival(logits, target_ids), mask).all(1)


def masked_cross_entropy(logits: torch.Tensor, target_ids: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over scored positions, per row. logits (B, M, V) -> (B,)."""
    B, M, V = logits.shape
    # Flattened rows, not logits.transpose(1, 2): the transpose would copy logits and gradient.
    ce = F.cross_entropy(logits.reshape(B * M, V).float(), target_ids.reshape(B * M),
                         reduction="none").view(B, M)
    mask = mask.to(ce.dtype)
    return (ce * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def masked_margin_loss(logits: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor,
                       margin: float = 1.0, after_miss: float | None = None,
                       miss_weight: float = 1.0) -> torch.Tensor:
    """Mean over scored positions of max(-margin, best other logit - target logit), per row
    (the Carlini-Wagner loss, as Faster-GCG uses it). logits (B, M, V) -> (B,).

    Negative exactly where the target token is the argmax, so it ranks prompts by the positions
    greedy decoding misses; a position won by `margin` earns nothing more. With `after_miss`
    w, a won position earns its credit only before the first missed one: greedy decoding
    never reaches the positions after a miss, so winning them under teacher forcing is worth
    nothing yet, and fixing the first miss pays for every won position behind it. There a
    position costs w * max(0, margin term): w = 1 still pays for losing them, w = 0 leaves
    them out until they are reached (a curriculum over the target). With after_miss, the first
    missed position itself weighs `miss_weight`: the one position whose win lengthens the
    greedy output, against the teacher-forced ones after it that greedy decoding never reads."""
    return margin_loss_of(*target_and_rival(logits, target_ids), mask, margin, after_miss,
                          miss_weight)


def margin_loss_of(target: torch.Tensor, rival: torch.Tensor, mask: torch.Tensor,
                   margin: float = 1.0, after_miss: float | None = None,
                   miss_weight: float = 1.0) -> torch.Tensor:
    """masked_margin_loss from target_and_rival's (B, M) pair -> (B,)."""
    per_position = (rival - target).clamp_min(-margin)
    if after_miss is not None:
        with torch.no_grad():  # a step function of the logits: no gradient
            won = strictly_won(target, rival, mask)  # (B, M)
            # Positions up to and including the first miss (that one is positive anyway).
            reached = torch.cat([torch.ones_like(won[:, :1]), won[:, :-1]], 1).cumprod(1)
            first_miss = reached.bool() & ~won  # (B, M): one position per row at most
        per_position = torch.where(reached.bool(), per_position,
                                   after_miss * per_position.clamp_min(0.0))
        if miss_weight != 1.0:
            per_position = torch.where(first_miss, miss_weight * per_position, per_position)
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum(1) / mask.sum(1).clamp_min(1.0)


# The margin losses and their weight on the positions after the first miss (None: no prefix).
MARGIN_OBJECTIVES = {"cw": None, "cw-prefix": 1.0, "cw-first": 0.0}
OBJECTIVES = ("ce", *MARGIN_OBJECTIVES)


def check_objective_name(name: str, option: str = "objective",
                         allowed: tuple[str, ...] = OBJECTIVES) -> None:
    """A one-line usage error naming the --set option to change when `name` is not one of
    `allowed`."""
    if name not in allowed:
        raise UsageError(f"{option} must be one of {', '.join(allowed)}, "
                         f"got {name!r}: change --set {option}=VALUE")


@dataclasses.dataclass(frozen=True)
class Objective:
    """The per-row loss a search minimises, with its settings: "ce" cross-entropy, "cw" the
    margin loss, "cw-prefix" the margin loss crediting won positions only up to the first
    miss, "cw-first" the margin loss of the positions up to the first miss alone. `margin`:
    a position won by this many logits earns nothing more (the cw losses); `miss_weight`:
    the weight of the first missed position (cw-prefix and cw-first; see
    masked_margin_loss). Settings an objective does not read are ignored."""

    name: str = "ce"
    margin: float = 1.0
    miss_weight: float = 1.0

    def __post_init__(self):
        check_objective_name(self.name)

    @property
    def is_margin(self) -> bool:
        return self.name in MARGIN_OBJECTIVES

    def __call__(self, logits: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor
                 ) -> torch.Tensor:
        """The loss: logits (R, M, V), target_ids and mask (R, M) -> (R,), with its
        gradient."""
        if self.is_margin:
            return self.margin_loss(*target_and_rival(logits, target_ids), mask)
        return masked_cross_entropy(logits, target_ids, mask)

    def margin_loss(self, target: torch.Tensor, rival: torch.Tensor, mask: torch.Tensor
                    ) -> torch.Tensor:
        """A margin objective from target_and_rival's (R, M) pair -> (R,)."""
        return margin_loss_of(target, rival, mask, self.margin, MARGIN_OBJECTIVES[self.name],
                              self.miss_weight)

    def loss_and_exact(self, logits: torch.Tensor, target_ids: torch.Tensor,
                       mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """loss and proven_exact of the same logits (R, M, V) -> (R,), (R,) bool, with a
        margin objective from a single top-2 pass over the vocabulary."""
        if not self.is_margin:
            return (masked_cross_entropy(logits, target_ids, mask),
                    proven_exact(logits, target_ids, mask))
        target, rival = target_and_rival(logits, target_ids)
        return self.margin_loss(target, rival, mask), strictly_won(target, rival, mask).all(1)


CROSS_ENTROPY = Objective()
