"""Screening candidates in a lower precision: what is kept, what is proven, what is counted."""

import pytest
import torch

import dlmi
from dlmi.errors import UsageError
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.screening import (
    best_per_group,
    screen_dtype,
    screened_variant_losses,
)
from tests.conftest import hidden_prompt_target


def test_best_per_group_keeps_the_lowest_of_each_group():
    loss = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.2, 0.7, 0.1])
    groups = torch.tensor([0, 0, 1, 1, 0, 1, 2])
    assert best_per_group(loss, groups, 2).tolist() == [
        False, True, False, True, True, True, True]
    assert best_per_group(loss, groups, 1).tolist() == [
        False, True, False, True, False, False, True]


def test_screen_dtype_auto_and_the_models_own_dtype():
    cpu = torch.device("cpu")
    assert screen_dtype("off", torch.float32, cpu) is None
    assert screen_dtype("bfloat16", torch.float32, cpu) == torch.bfloat16
    assert screen_dtype("bfloat16", torch.bfloat16, cpu) is None  # nothing to gain
    assert screen_dtype("auto", torch.bfloat16, cpu) is None
    with pytest.raises(UsageError, match="screen must be one of"):
        screen_dtype("fp8", torch.float32, cpu)


def test_lowered_copy_is_the_same_model_in_bfloat16_and_counts_its_flops(tiny_lm):
    dlm = DifferentiableLM(tiny_lm)
    low = dlm.lowered(torch.bfloat16)
    assert low is dlm.lowered(torch.bfloat16)  # made once
    assert low.W_E.dtype == torch.bfloat16 and dlm.W_E.dtype == torch.float32
    prompts = torch.randint(3, tiny_lm.vocab_size, (6, 4), generator=torch.Generator()
                            .manual_seed(0))
    target = torch.randint(3, tiny_lm.vocab_size, (6, 5), generator=torch.Generator()
                           .manual_seed(1))
    mask = torch.ones_like(target, dtype=torch.bool)
    before = dlm.compute.flops
    low_loss, _ = low.hard_losses(prompts, target, mask)
    assert dlm.compute.flops > before  # the screen's passes are the model's compute too
    loss, _ = dlm.hard_losses(prompts, target, mask)
    assert torch.allclose(low_loss, loss, atol=0.1)  # close, not equal
    assert not torch.equal(low_loss, loss)


def _swaps(lm, seed, B=3, W=12, N=4):
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(3, lm.vocab_size, (B, N), generator=g)
    cand = base.repeat_interleave(W, 0)  # (B * W, N)
    pos = torch.randint(N, (B * W,), generator=g)
    cand[torch.arange(B * W), pos] = torch.randint(3, lm.vocab_size, (B * W,), generator=g)
    rows = torch.arange(B).repeat_interleave(W)
    target = torch.randint(3, lm.vocab_size, (B, 5), generator=g)
    return base, cand, rows, target, torch.ones_like(target, dtype=torch.bool)


def test_kept_swaps_carry_the_models_own_losses_and_the_rest_are_dropped(tiny_lm):
    dlm = DifferentiableLM(tiny_lm)
    low = dlm.lowered(torch.bfloat16)
    base, cand, rows, target, mask = _swaps(tiny_lm, 3)
    full, _ = dlm.variant_losses(base, cand, rows, target, mask)
    s = screened_variant_losses(dlm, low, base, cand, rows, target, mask, keep=3)
    assert s.kept.view(3, -1).sum(1).tolist() == [3, 3, 3]  # nothing proven exact here
    assert torch.allclose(s.loss[s.kept], full[s.kept], atol=1e-5)
    assert torch.isinf(s.loss[~s.kept]).all() and not s.exact[~s.kept].any()
    # The screen ranks as the model does, nearly: its kept swaps hold each row's best.
    assert (s.loss.view(3, -1).min(1).values <= full.view(3, -1).min(1).values + 0.05).all()
    low_loss, _ = low.variant_losses(base, cand, rows, target, mask)
    low_base, _ = low.hard_losses(base, target, mask)
    assert torch.equal(s.no_gain, low_loss >= low_base[rows])


def test_a_swap_that_solves_the_target_is_kept_and_proven(tiny_lm):
    dlm = DifferentiableLM(tiny_lm)
    hidden = torch.randint(3, tiny_lm.vocab_size, (1, 4), generator=torch.Generator()
                           .manual_seed(9))
    target = dlm.greedy_decode(hidden, 5)  # (1, 5)
    base = hidden.clone()
    base[0, 2] = (hidden[0, 2] + 1) % tiny_lm.vocab_size
    cand = base.repeat(8, 1)
    cand[:, 1] = torch.arange(3, 11)
    cand[5] = hidden[0]  # the one swap that restores the hidden prompt
    rows = torch.zeros(8, dtype=torch.long)
    s = screened_variant_losses(dlm, dlm.lowered(torch.bfloat16), base, cand, rows, target,
                                torch.ones_like(target, dtype=torch.bool), keep=1)
    assert bool(s.kept[5]) and bool(s.exact[5])
    assert s.exact.sum() == 1


@pytest.mark.parametrize("method", ["dlmi-search", "gcg"])
def test_a_screened_search_still_recovers_a_hidden_prompt(tiny_lm, method):
    target = hidden_prompt_target(tiny_lm, 100, prompt_len=6, target_len=8)
    options = {"search_width": 32, "top_k": 32} if method == "gcg" else {}
    r = dlmi.invert(tiny_lm, target, method=method, prompt_length=6, steps=200,
                    screen="bfloat16", **options)
    assert r.exact_match and r.output_ids == target  # judged by greedy decoding in float32


def test_an_unknown_screen_is_a_usage_error(tiny_lm):
    for method in ("dlmi-search", "gcg"):
        with pytest.raises(UsageError, match="screen must be one of"):
            dlmi.invert(tiny_lm, [5, 6], method=method, prompt_length=2, steps=1,
                        screen="fp8")
        with pytest.raises(UsageError, match="screen_keep"):
            dlmi.invert(tiny_lm, [5, 6], method=method, prompt_length=2, steps=1,
                        screen_keep=0)


def test_auto_screens_only_where_bfloat16_is_native(monkeypatch):
    import dlmi.model.screening as screening

    cpu = torch.device("cpu")
    monkeypatch.setattr(screening, "fast_bfloat16", lambda device: False)
    assert screening.screen_dtype("auto", torch.float32, cpu) is None
    assert screening.screen_dtype("bfloat16", torch.float32, cpu) == torch.bfloat16  # asked
    monkeypatch.setattr(screening, "fast_bfloat16", lambda device: True)
    assert screening.screen_dtype("auto", torch.float32, cpu) == torch.bfloat16


def test_results_record_whether_auto_screens_here(tiny_lm):
    from dlmi.model.screening import fast_bfloat16

    r = dlmi.invert(tiny_lm, [5, 6], prompt_length=2, steps=1)
    assert r.config["screen"] == "auto"
    assert r.provenance["bfloat16_native"] is fast_bfloat16(torch.device("cpu"))


def test_without_verdicts_the_bases_are_not_scored_again(tiny_lm):
    dlm = DifferentiableLM(tiny_lm)
    low = dlm.lowered(torch.bfloat16)
    base, cand, rows, target, mask = _swaps(tiny_lm, 4)
    passes = dlm.compute.forward_passes
    with_verdicts = screened_variant_losses(dlm, low, base, cand, rows, target, mask, keep=3)
    cost = dlm.compute.forward_passes - passes
    passes = dlm.compute.forward_passes
    plain = screened_variant_losses(dlm, low, base, cand, rows, target, mask, keep=3,
                                    verdicts=False)
    assert plain.no_gain is None and with_verdicts.no_gain is not None
    assert dlm.compute.forward_passes - passes == cost - base.shape[0]
    assert torch.equal(plain.loss, with_verdicts.loss)
