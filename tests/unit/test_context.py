"""A prompt in K pairs of fixed context: every pair sees what it would see alone."""

import torch
import torch.nn.functional as F

from dlmi.model.context import SpanContext
from dlmi.model.dlm import DifferentiableLM

PAIRS = [((10, 11, 12), (20,)), ((13,), (21, 22, 23, 24)), ((), ())]


def test_layout_left_pads_and_places_every_piece():
    fixed, kind, L = SpanContext.of_pairs(PAIRS).layout(n=2, tail=3, device="cpu")
    assert L == 1 + 2 + 4 + 3
    assert kind[0].tolist() == [0, 0, 1, 1, 1, 2, 2, 1, 3, 3, 3][-L:]
    assert kind[2].tolist() == [0] * 5 + [2, 2, 3, 3, 3]
    assert fixed[1, :1].tolist() == [13] and fixed[1, 3:7].tolist() == [21, 22, 23, 24]


def test_each_pair_gets_the_logits_it_gets_alone(any_tiny):
    prompt = torch.tensor([[5, 9, 40], [7, 8, 60]])  # (B, N)
    target = torch.tensor([[30, 31], [32, 33]])  # per pair (B, M); the same for every pair
    dlm = DifferentiableLM(any_tiny, context=SpanContext.of_pairs(PAIRS))
    soft = dlm.soft_embed(F.one_hot(prompt, dlm.vocab_size).float())
    got = dlm.teacher_forced_logits(soft, target.repeat(1, len(PAIRS)))  # (B, K * M, V)
    assert got.shape == (2, 2 * len(PAIRS), dlm.vocab_size)
    for k, (before, after) in enumerate(PAIRS):
        alone = DifferentiableLM(any_tiny, context=SpanContext.single(before, after))
        ref = alone.teacher_forced_logits(soft, target)
        assert torch.allclose(got[:, 2 * k: 2 * k + 2], ref, atol=1e-4), k
        assert torch.isfinite(got).all()


def test_gradient_reaches_the_prompt_through_padded_pairs(tiny_lm):
    dlm = DifferentiableLM(tiny_lm, context=SpanContext.of_pairs(PAIRS))
    p = torch.full((1, 3, dlm.vocab_size), 1.0 / dlm.vocab_size, requires_grad=True)
    logits = dlm.teacher_forced_logits(dlm.soft_embed(p), torch.tensor([[30, 31] * 3]))
    logits.logsumexp(-1).sum().backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_greedy_decode_per_pair_equals_alone_and_pads_past_output_lengths(any_tiny):
    prompt = torch.tensor([[5, 9, 40]])
    ctx = SpanContext.of_pairs(PAIRS, output_lengths=(4, 2, 4))
    out = DifferentiableLM(any_tiny, context=ctx).greedy_decode(prompt, 12).view(3, 4)
    eos = any_tiny.eos_token_id
    for k, (before, after) in enumerate(PAIRS):
        alone = DifferentiableLM(any_tiny, context=SpanContext.single(before, after))
        ref = alone.greedy_decode(prompt, 4)[0]
        n = ctx.output_lengths[k]
        assert out[k, :n].tolist() == ref[:n].tolist(), k
        assert out[k, n:].tolist() == [eos] * (4 - n)


def test_target_mask_scores_each_pair_up_to_its_length(tiny_lm):
    ctx = SpanContext.of_pairs(PAIRS[:2], output_lengths=(3, 1))
    dlm = DifferentiableLM(tiny_lm, context=ctx)
    mask = dlm.target_mask(torch.tensor([[30, 31, 32, 33, 34, 35]]), torch.tensor([6]))
    assert mask.tolist() == [[True, True, True, True, False, False]]
