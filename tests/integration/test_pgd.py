"""PGD (Geisler et al. 2024): its two projections, its schedules, its restarts; and the best-
prompt bookkeeping it shares with ADC (relaxed_onehot)."""

import pytest
import torch

import dlmi
from dlmi.errors import UsageError
from dlmi.inversion.config_builder import build_config
from dlmi.methods.base import Batch, row_generators
from dlmi.methods.pgd import PGD, entropy_projection, simplex_projection
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.vocab import allowed_token_ids
from tests.conftest import hidden_prompt_target


def test_simplex_projection_matches_a_hand_computation():
    # sorted 0.5, 0.3, -0.1: two entries stay, theta = (0.8 - 1) / 2 = -0.1
    out = simplex_projection(torch.tensor([[0.5, -0.1, 0.3]]))
    assert torch.allclose(out, torch.tensor([[0.6, 0.0, 0.4]]))
    on = torch.tensor([0.7, 0.0, 0.2, 0.1])
    assert torch.allclose(simplex_projection(on), on)  # already on the simplex: unchanged


def _gini(p):
    return 1 - p.square().sum(-1)


def test_entropy_projection_puts_a_spread_row_on_the_bound():
    # pushed away from the uniform centre, every entry stays positive: it lands on the sphere
    # where the Gini impurity equals (1 - factor) (d - 1) / d
    out = entropy_projection(torch.tensor([[0.27, 0.25, 0.25, 0.23]]), 0.05)
    assert _gini(out).item() == pytest.approx(0.95 * 3 / 4, abs=1e-6)
    assert torch.allclose(out, torch.tensor([[0.3869, 0.25, 0.25, 0.1131]]), atol=1e-4)


def test_entropy_projection_only_sharpens_and_keeps_the_argmax():
    # Rows pushed past the simplex's faces lose entries when projected back (one pass, as
    # the paper's Algorithm 3), so they end between their start and the bound.
    g = torch.Generator().manual_seed(0)
    X = simplex_projection(torch.rand(50, 30, generator=g) / 10)  # spread rows
    for factor in (0.2, 0.4, 0.8):
        out = entropy_projection(X, factor)
        assert torch.allclose(out.sum(-1), torch.ones(50)) and (out >= 0).all()
        assert (out.argmax(-1) == X.argmax(-1)).all()
        assert (_gini(out) < _gini(X) - 0.01).all()  # every row broke the bound: sharper


def test_entropy_projection_leaves_rows_within_the_bound_alone():
    peaked = torch.tensor([[0.9, 0.05, 0.05, 0.0]])
    assert torch.equal(entropy_projection(peaked, 0.4), peaked)
    spread = torch.full((1, 4), 0.25) + torch.tensor([[0.01, 0.0, 0.0, -0.01]])
    assert torch.equal(entropy_projection(spread, 0.0), spread)  # factor 0: no bound
    ginis = [_gini(entropy_projection(spread, f)).item() for f in (0.0, 0.4, 1.0)]
    assert ginis[0] > ginis[1] > ginis[2]  # a stronger factor, a sharper row


def _method(lm, **overrides):
    cfg = build_config("pgd", overrides={"prompt_length": 4, **overrides})
    return PGD(cfg, DifferentiableLM(lm, prompt_vocab=allowed_token_ids(lm)))


def test_learning_rate_is_held_then_annealed_in_warm_restarts(tiny_lm):
    m = _method(tiny_lm, lr=0.1, lr_hold=10, lr_period=4, lr_floor=0.5)
    rates = [m.learning_rate(s) for s in range(1, 20)]
    assert rates[:10] == [0.1] * 10
    assert rates[10] == pytest.approx(0.1) and rates[12] == pytest.approx(0.075)
    assert min(rates) >= 0.05 and rates[14] == pytest.approx(0.1)  # step 15 restarts


def test_iterate_stays_on_the_simplex_and_sharpens_as_the_bound_tightens(tiny_lm):
    m = _method(tiny_lm, starts=2, entropy_steps=4, entropy_factor=0.9)
    target = torch.tensor([hidden_prompt_target(tiny_lm, 4, target_len=6)])
    batch = Batch(target, torch.ones_like(target, dtype=torch.bool),
                  row_generators([0], torch.device("cpu")))
    state = m.init_state(batch)
    for step in range(1, 9):
        m.step(state, batch, step)
        assert torch.allclose(state.X.sum(-1), torch.ones(1, 2, 4)) and (state.X >= 0).all()
    assert _gini(state.X).max() < 0.5  # far sharper than the dense start



def test_a_stalled_start_goes_back_to_its_best_prompt_one_hot(tiny_lm):
    m = _method(tiny_lm, starts=2, patience=2)
    target = torch.tensor([hidden_prompt_target(tiny_lm, 4, target_len=6)])
    batch = Batch(target, torch.ones_like(target, dtype=torch.bool),
                  row_generators([0], torch.device("cpu")))
    state = m.init_state(batch)
    hard = torch.tensor([[[1, 2, 3, 4], [5, 6, 7, 8]]])
    m._restart_stalled(state, hard, torch.tensor([[1.0, 2.0]]))  # both improve on inf
    m._restart_stalled(state, hard + 1, torch.tensor([[3.0, 1.5]]))  # start 1 improves
    assert state.stall.tolist() == [[1, 0]]
    m._restart_stalled(state, hard + 2, torch.tensor([[3.0, 3.0]]))  # start 0 stalls twice
    assert state.stall.tolist() == [[0, 1]]
    assert state.X[0, 0].argmax(-1).tolist() == [1, 2, 3, 4]
    assert (state.X[0, 0].max(-1).values == 1.0).all()  # one-hot on its own best
    assert state.start_best[0, 1].tolist() == [6, 7, 8, 9]


@pytest.mark.parametrize("method", ["adc", "pgd"])  # both keep their best hard prompt alike
def test_best_loss_never_rises_and_the_result_decodes_as_reported(tiny_lm, method):
    target = hidden_prompt_target(tiny_lm, 4, target_len=6)
    r = dlmi.invert(tiny_lm, target, method=method, prompt_length=4, steps=24, eval_every=4,
                    early_stop=False)
    losses = [h["loss"] for h in r.history]
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False)), losses
    decoded = DifferentiableLM(tiny_lm).greedy_decode(torch.tensor([r.prompt_ids]), len(target))
    assert r.exact_match == (decoded[0].tolist() == target)


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"entropy_factor": 1.5}, {"lr_floor": -0.1},
                                 {"lr_period": 0}, {"patience": -1}, {"starts": 0},
                                 {"objective": "mse"}])
def test_bad_options_are_refused(bad):
    with pytest.raises(UsageError):
        build_config("pgd", overrides=bad)


def test_simplex_projection_from_the_largest_entries_equals_the_full_sort():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(64, 300, generator=g) * torch.rand(64, 1, generator=g) * 3  # wide, narrow
    full = simplex_projection(X, head=300)
    for head in (2, 8, 40):
        assert torch.allclose(simplex_projection(X, head=head), full, atol=1e-6)
    assert torch.allclose(full.sum(-1), torch.ones(64), atol=1e-5)
