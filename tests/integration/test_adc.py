"""ADC (dense-to-sparse relaxed one-hot): its projection, its sparsity schedule, its bookkeeping."""

import pytest
import torch

from dlmi.errors import UsageError
from dlmi.inversion.config_builder import build_config
from dlmi.methods.adc import ADC, sparsify
from dlmi.methods.base import Batch, row_generators
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.vocab import allowed_token_ids
from tests.conftest import hidden_prompt_target


def test_sparsify_keeps_the_largest_entries_and_renormalises():
    X = torch.tensor([[[0.5, -0.2, 0.3, 0.1]], [[0.5, -0.2, 0.3, 0.1]]])  # (2, 1, 4)
    out = sparsify(X, torch.tensor([2, 1]))
    assert torch.allclose(out[0, 0], torch.tensor([0.625, 0.0, 0.375, 0.0]), atol=1e-5)
    assert out[1, 0].tolist() == [1.0, 0.0, 0.0, 0.0]


def test_sparsify_never_empties_a_position():
    out = sparsify(torch.tensor([[[-1.0, -2.0, -3.0]]]), torch.tensor([2]))
    assert torch.allclose(out[0, 0], torch.tensor([0.5, 0.5, 0.0]))


def _method(lm, **overrides):
    cfg = build_config("adc", overrides={"prompt_length": 4, **overrides})
    return ADC(cfg, DifferentiableLM(lm, prompt_vocab=allowed_token_ids(lm)))


def test_positions_hold_at_most_as_many_tokens_as_missed_target_positions(tiny_lm):
    m = _method(tiny_lm, starts=3)
    target = torch.tensor([hidden_prompt_target(tiny_lm, 4, target_len=6)])
    batch = Batch(target, torch.ones_like(target, dtype=torch.bool),
                  row_generators([0], torch.device("cpu")))
    state = m.init_state(batch)
    assert (state.X > 0).sum(-1).min() > 6  # dense before the first step
    for step in range(1, 4):
        m.step(state, batch, step)
        nonzero = (state.X > 0).sum(-1)  # (1, R, N)
        assert nonzero.max() <= 6 and nonzero.min() >= 1
        assert torch.allclose(state.X.sum(-1), torch.ones(1, 3, 4))


def test_a_working_start_turns_one_hot_and_is_proven_solved(tiny_lm):
    g = torch.Generator().manual_seed(5)
    hidden = torch.randint(3, tiny_lm.vocab_size, (1, 4), generator=g)
    target = DifferentiableLM(tiny_lm).greedy_decode(hidden, 5)
    m = _method(tiny_lm, init_prompt=tuple(hidden[0].tolist()), starts=2, lr=1e-3)
    batch = Batch(target, torch.ones_like(target, dtype=torch.bool),
                  row_generators([0], torch.device("cpu")))
    state = m.init_state(batch)
    out = m.step(state, batch, 1)
    assert bool(out.solved[0])  # every position won: the teacher-forced proof
    assert ((state.X > 0).sum(-1) == 1).all()  # nothing missed: one token per position
    assert m.dlm.global_ids(m.current_prompts(state)).tolist() == hidden.tolist()


@pytest.mark.parametrize("bad", [{"momentum": 1.0}, {"starts": 0}, {"objective": "mse"},
                                 {"lr": 0.0}])
def test_bad_options_are_refused(bad):
    with pytest.raises(UsageError):
        build_config("adc", overrides=bad)


def test_drawn_prompts_use_only_tokens_x_holds(tiny_lm):
    m = _method(tiny_lm, starts=2, samples=5)
    target = torch.tensor([hidden_prompt_target(tiny_lm, 4, target_len=6)] * 2)
    batch = Batch(target, torch.ones_like(target, dtype=torch.bool),
                  row_generators([0, 1], torch.device("cpu")))
    state = m.init_state(batch)
    m.step(state, batch, 1)
    drawn = m._draw(state.X, batch)  # (B, R, S, N)
    assert drawn.shape == (2, 2, 5, 4)
    held = state.X[:, :, None].expand(-1, -1, 5, -1, -1).gather(-1, drawn[..., None])
    assert (held > 0).all()
