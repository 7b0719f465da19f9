"""A DLMI step run through the model in several passes (pass_tokens) computes what one pass
computes: the same loss, gradients and next Z."""

import pytest
import torch

from dlmi.methods.base import Batch, row_generators
from dlmi.methods.dlmi_method import DLMI, DLMIConfig
from dlmi.model.dlm import DifferentiableLM


def _step(lm, pass_tokens: int, **options):
    dlm = DifferentiableLM(lm)
    targets = torch.randint(3, lm.vocab_size, (3, 5), generator=torch.Generator().manual_seed(0))
    batch = Batch(targets, torch.ones_like(targets, dtype=torch.bool),
                  row_generators([0, 1, 2], dlm.device))
    method = DLMI(DLMIConfig(prompt_length=6, samples=4, pass_tokens=pass_tokens, **options), dlm)
    state = method.init_state(batch)
    calls = []
    hook = lm.model.register_forward_hook(lambda m, args, out: calls.append(1))
    try:
        out = method.step(state, batch, 1)
    finally:
        hook.remove()
    return out, state, len(calls)


@pytest.mark.parametrize("options", [{}, {"straight_through": True}])
def test_several_passes_give_the_same_step_as_one(tiny_lm, options):
    one, state_one, calls_one = _step(tiny_lm, 10_000, **options)
    many, state_many, calls_many = _step(tiny_lm, 25, **options)  # 11 tokens a row: 2 a pass
    assert (calls_one, calls_many) == (1, 6)  # 3 targets x 4 samples = 12 rows
    torch.testing.assert_close(many.loss, one.loss)
    assert torch.equal(many.train_argmax, one.train_argmax)
    assert torch.equal(many.candidates, one.candidates)
    torch.testing.assert_close(state_many.Z, state_one.Z)
    torch.testing.assert_close(state_many.phi, state_one.phi)

