import pytest
import torch

import dlmi
from dlmi.errors import UsageError
from tests.conftest import hidden_prompt_target

FAST = dict(prompt_length=4, eval_every=4, method="dlmi")  # the paper's method


def test_recovers_hidden_prompt_targets_exactly(tiny_lm):
    # Measured: seeds 0 and 3 are solved at steps 8 and 16 of 200 with the paper's defaults.
    targets = [hidden_prompt_target(tiny_lm, s) for s in (0, 3)]
    results = dlmi.invert_batch(tiny_lm, targets, steps=100, **FAST)
    for r, t in zip(results, targets, strict=True):
        assert r.exact_match and r.lcs_ratio == 1.0
        assert r.output_ids == t and r.target_ids == t
        assert r.solved_at_step is not None and r.steps == r.solved_at_step  # early stop
        assert r.steps < 100


def test_loss_falls_and_temperature_is_recorded(tiny_lm):
    target = hidden_prompt_target(tiny_lm, 2)
    r = dlmi.invert(tiny_lm, target, steps=40, early_stop=False, **FAST)
    losses = [h["loss"] for h in r.history]
    assert losses[-1] < losses[0]
    assert all(h["temperature"] is not None and h["temperature"] > 0 for h in r.history)
    assert [h["step"] for h in r.history] == list(range(4, 41, 4))
    assert r.steps == 40 and r.compute["backward_passes"] > 0 and r.compute["flops"] > 0


def test_batch_equals_separate_runs(tiny_lm):
    targets = [hidden_prompt_target(tiny_lm, s, target_len=5) for s in (1, 2, 4)]
    opts = dict(steps=12, early_stop=False, **FAST)
    batched = dlmi.invert_batch(tiny_lm, targets, **opts)
    for target, b in zip(targets, batched, strict=True):
        alone = dlmi.invert(tiny_lm, target, **opts)
        assert alone.prompt_ids == b.prompt_ids
        assert alone.lcs_ratio == b.lcs_ratio
        for h1, h2 in zip(alone.history, b.history, strict=True):
            assert abs(h1["loss"] - h2["loss"]) < 1e-3


def test_targets_of_different_lengths_in_one_batch(tiny_lm):
    results = dlmi.invert_batch(tiny_lm, ["ab", "abcdef"], steps=8, **FAST)
    assert [len(r.output_ids) for r in results] == [2, 6]
    assert [r.target_text for r in results] == ["ab", "abcdef"]


def test_interrupt_keeps_best_result(tiny_lm):
    target = hidden_prompt_target(tiny_lm, 5)

    def stop_at_10(progress):
        if progress.step == 10:
            raise KeyboardInterrupt

    r = dlmi.invert(tiny_lm, target, steps=100, callback=stop_at_10, **FAST)
    assert r.interrupted and r.steps == 10
    assert len(r.prompt_ids) == 4 and len(r.output_ids) == len(target)
    assert 0.0 <= r.lcs_ratio <= 1.0 and r.history


def test_fixed_prefix_is_kept_and_reported(tiny_lm):
    r = dlmi.invert(tiny_lm, "abc", prefix_ids=tiny_lm.encode("Q: "), steps=4, **FAST)
    assert r.prefix_ids == tiny_lm.encode("Q: ")


def test_text_round_trip_flag(tiny_lm):
    r = dlmi.invert(tiny_lm, "hello", steps=4, **FAST)
    assert r.roundtrip_ok == (tiny_lm.encode(r.prompt_text) == r.prompt_ids)
    assert "hello" in str(r)


@pytest.mark.parametrize("kwargs,text", [
    (dict(target=""), "empty"),
    (dict(target="a" * 300), "context"),
    (dict(target=[10_000]), "vocabulary"),
])
def test_bad_targets(tiny_lm, kwargs, text):
    with pytest.raises(UsageError, match=text):
        dlmi.invert(tiny_lm, kwargs["target"], steps=2, **FAST)


def test_gpt2_architecture_runs_end_to_end(tiny_gpt2):
    target = hidden_prompt_target(tiny_gpt2, 0)
    r = dlmi.invert(tiny_gpt2, target, steps=8, **FAST)
    assert r.steps == 8 or r.exact_match
    assert len(r.output_ids) == len(target)


def test_straight_through_and_no_teacher_forcing_variants_run(tiny_lm):
    target = hidden_prompt_target(tiny_lm, 1)
    for opts in (dict(straight_through=True), dict(teacher_forcing=False),
                 dict(temperature="learnable"), dict(temperature="fixed"),
                 dict(discretize="nearest")):
        r = dlmi.invert(tiny_lm, target, steps=8, early_stop=False, **FAST, **opts)
        losses = [h["loss"] for h in r.history]
        assert all(torch.isfinite(torch.tensor(losses))), opts
