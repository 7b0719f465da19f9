"""The losses a search ranks hard prompts by (dlmi.model.objective), against hand
computations."""

import pytest
import torch

from dlmi.errors import UsageError
from dlmi.model.objective import Objective, masked_margin_loss, target_and_rival


def test_margin_loss_is_negative_exactly_where_the_target_wins():
    logits = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]]])  # (1, M=2, V=3)
    target = torch.tensor([[0, 2]])
    one = torch.ones(1, 1, dtype=torch.bool)
    # Position 0: target wins by 1, capped at -margin; position 1: loses by 2.
    assert masked_margin_loss(logits[:, :1], target[:, :1], one, 0.5).item() == -0.5
    assert masked_margin_loss(logits[:, :1], target[:, :1], one, 5.0).item() == -1.0
    assert masked_margin_loss(logits[:, 1:], target[:, 1:], one, 0.5).item() == 2.0
    both = masked_margin_loss(logits, target, torch.ones(1, 2, dtype=torch.bool), 0.5)
    assert both.item() == 0.75
    masked = masked_margin_loss(logits, target, torch.tensor([[True, False]]), 0.5)
    assert masked.item() == -0.5


def test_prefix_margin_loss_credits_won_positions_only_before_the_first_miss():
    # Positions 0 and 2 won by 1, position 1 lost by 2 (V = 3).
    logits = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0]]])
    target = torch.tensor([[0, 2, 2]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    # cw credits position 2 (-1); cw-prefix does not: greedy decoding never reaches it.
    assert masked_margin_loss(logits, target, mask, 1.0).item() == 0.0
    prefix = masked_margin_loss(logits, target, mask, 1.0, after_miss=1.0)
    assert prefix.item() == pytest.approx(1 / 3)
    # Once position 1 is won, the prefix runs to the end and both losses agree.
    fixed = logits.clone()
    fixed[0, 1, 2] = 4.0
    assert (masked_margin_loss(fixed, target, mask, 1.0, after_miss=1.0).item()
            == masked_margin_loss(fixed, target, mask, 1.0).item() == -1.0)
    # cw-first leaves the positions after the miss out while they lose: the first miss alone.
    later = torch.tensor([[0, 2, 0]])
    assert masked_margin_loss(logits, later, mask, 1.0, after_miss=0.0).item() == pytest.approx(
        1 / 3)
    assert masked_margin_loss(logits, later, mask, 1.0, after_miss=1.0).item() == pytest.approx(
        2 / 3)
    # A masked-out miss does not end the prefix.
    skip = torch.tensor([[True, False, True]])
    assert masked_margin_loss(logits, target, skip, 1.0, after_miss=1.0).item() == -1.0
    # The gradient still reaches the positions after the miss while they lose.
    lost = logits.clone().requires_grad_()
    masked_margin_loss(lost, later, mask, 1.0, after_miss=1.0).backward()
    assert lost.grad[0, 2].abs().sum() > 0


def test_miss_weight_weighs_the_first_missed_position_alone():
    # Position 0 won by 1, position 1 lost by 2, position 2 lost by 1 (V = 3).
    logits = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0]]])
    target = torch.tensor([[0, 2, 0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    # cw-prefix: (-1 + 2 + 1) / 3; the first miss (position 1) counted 4 times: (-1 + 8 + 1) / 3.
    weighted = masked_margin_loss(logits, target, mask, 1.0, after_miss=1.0, miss_weight=4.0)
    assert weighted.item() == pytest.approx(8 / 3)
    assert Objective("cw-prefix", 1.0, 4.0)(logits, target, mask).item() == pytest.approx(8 / 3)
    # cw-first: the positions after the miss left out: (-1 + 8) / 3.
    assert masked_margin_loss(logits, target, mask, 1.0, after_miss=0.0,
                              miss_weight=4.0).item() == pytest.approx(7 / 3)
    # Nothing missed: no position to weigh, the loss is cw-prefix's.
    won = torch.tensor([[0, 1, 2]])
    assert masked_margin_loss(logits, won, mask, 1.0, after_miss=1.0,
                              miss_weight=4.0).item() == -1.0
    # The gradient at the first miss grows with its weight; the others' stays.
    grads = []
    for w in (1.0, 4.0):
        x = logits.clone().requires_grad_()
        masked_margin_loss(x, target, mask, 1.0, after_miss=1.0, miss_weight=w).backward()
        grads.append(x.grad[0])
    assert torch.allclose(grads[1][1], 4 * grads[0][1])
    assert torch.equal(grads[1][2], grads[0][2]) and grads[0][1].abs().sum() > 0


def test_loss_and_exact_match_the_direct_formulas_and_a_tie_is_never_proof():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, 50, generator=g)  # (R, M, V)
    target = logits.argmax(-1)  # every position won ...
    target[3:, 2] = (target[3:, 2] + 1) % 50  # ... but in rows 3-5, where position 2 is lost
    mask = torch.ones(6, 4, dtype=torch.bool)
    masked_other = logits.scatter(-1, target[..., None], float("-inf")).amax(-1)
    t, rival = target_and_rival(logits, target)
    assert torch.equal(rival, masked_other)
    assert torch.equal(t, logits.gather(-1, target[..., None])[..., 0])
    for objective in ("ce", "cw", "cw-prefix", "cw-first"):
        loss, exact = Objective(objective).loss_and_exact(logits, target, mask)
        assert torch.allclose(loss, Objective(objective)(logits, target, mask))
        assert exact.tolist() == [True] * 3 + [False] * 3
    # The lost position masked out: proof again.
    unscored = mask.clone()
    unscored[:, 2] = False
    assert Objective("cw-prefix").loss_and_exact(logits, target, unscored)[1].all()
    # A tie for the top is not proof, whatever index the target has.
    tied = torch.zeros(1, 1, 5)
    tied[0, 0, 1] = tied[0, 0, 3] = 2.0
    for token in (1, 3):
        assert not Objective("cw").loss_and_exact(tied, torch.tensor([[token]]), 
                                                  mask[:1, :1])[1].item()


def test_an_unknown_objective_is_a_usage_error_that_names_the_option():
    with pytest.raises(UsageError, match=r"objective must be one of ce, cw, cw-prefix, cw-first, "
                                         r"got 'hinge': change --set objective=VALUE"):
        Objective("hinge")


def test_an_objective_reads_only_its_own_settings():
    logits = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]]])  # (1, M=2, V=3)
    target = torch.tensor([[0, 2]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    # Cross-entropy ignores margin and miss_weight; cw ignores miss_weight (no prefix).
    assert torch.equal(Objective("ce", 0.5, 4.0)(logits, target, mask),
                       Objective("ce")(logits, target, mask))
    assert torch.equal(Objective("cw", 0.5, 4.0)(logits, target, mask),
                       Objective("cw", 0.5)(logits, target, mask))
    assert Objective("cw", 0.5)(logits, target, mask).item() == 0.75
    assert not Objective("ce").is_margin and Objective("cw-first").is_margin
