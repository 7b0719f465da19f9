"""Fixed text shared by every sequence runs once, as a KV cache: every forward gives what it
gives without the cache, gradients included, for less compute."""

import torch
import torch.nn.functional as F

from dlmi.model.context import SpanContext
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.objective import Objective

HEADER = (1, 50, 51, 52, 53, 54)  # e.g. a chat template's system message, in every pair
# Pairs as in prompt tuning: the header, then text that differs, then the span, then more text.
PAIRS = [(HEADER + (60, 61), (20,)), (HEADER, (21, 22, 23, 24)), (HEADER + (62,), ())]


def pair_of_dlms(lm, context):
    cached = DifferentiableLM(lm, context=context)
    plain = DifferentiableLM(lm, context=context)
    plain.prefix_cache_min = None
    assert cached.cached_prefix == len(HEADER) and plain.cached_prefix == 0
    return cached, plain


def test_shared_prefix_and_layout_with_padding_after_it():
    ctx = SpanContext.of_pairs(PAIRS)
    assert ctx.shared_prefix() == len(HEADER)
    assert SpanContext.of_pairs([((1, 2, 3), ()), ((1, 2, 4), ())]).shared_prefix() == 2
    fixed, kind, L = ctx.layout(n=2, tail=1, device="cpu", shared=len(HEADER))
    assert L == len(HEADER) + 2 + 4 + 1  # pair 1 is the longest
    assert (fixed[:, :6] == torch.tensor(HEADER)).all()  # same positions in every pair
    assert kind[2].tolist() == [1] * 6 + [0] * 3 + [1, 2, 2, 3]  # pads after the header


def test_cached_forwards_equal_plain_ones(any_tiny):
    ctx = SpanContext.of_pairs(PAIRS, output_lengths=(3, 2, 3))
    cached, plain = pair_of_dlms(any_tiny, ctx)
    prompt = torch.tensor([[5, 9, 40], [7, 8, 60]])  # (B, N)
    target = torch.tensor([[30, 31, 32] * 3, [33, 34, 35] * 3])  # (B, K * M)
    grads, logits = [], []
    for dlm in (cached, plain):
        p = F.one_hot(prompt, dlm.vocab_size).float().requires_grad_()
        out = dlm.teacher_forced_logits(dlm.soft_embed(p), target)
        out.logsumexp(-1).sum().backward()
        logits.append(out.detach())
        grads.append(p.grad)
    assert torch.allclose(logits[0], logits[1], atol=1e-4)
    assert torch.allclose(grads[0], grads[1], atol=1e-4)
    assert cached.greedy_decode(prompt, 9).tolist() == plain.greedy_decode(prompt, 9).tolist()
    mask = torch.ones_like(target, dtype=torch.bool)
    for a, b in zip(cached.hard_losses(prompt, target, mask), plain.hard_losses(prompt, target,
                                                                                mask),
                    strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-4)
    free = [dlm.free_running_logits(dlm.embed_prompt(prompt), 6,
                                    [torch.Generator().manual_seed(s) for s in (0, 1)])
            for dlm in (cached, plain)]
    assert torch.allclose(free[0], free[1], atol=1e-4)


def test_cache_cuts_compute_and_follows_a_context_change(tiny_lm):
    ctx = SpanContext.single(HEADER * 4)  # a long fixed prefix, one pair (inversion)
    cached, plain = DifferentiableLM(tiny_lm, context=ctx), DifferentiableLM(tiny_lm, context=ctx)
    plain.prefix_cache_min = None
    prompt = torch.randint(3, 90, (16, 4))
    target = torch.randint(3, 90, (16, 5))
    mask = torch.ones_like(target, dtype=torch.bool)
    for _ in range(3):  # the prefix runs once; every later forward reads the cache
        cached.hard_losses(prompt, target, mask)
        plain.hard_losses(prompt, target, mask)
    assert cached.compute.tokens < 0.5 * plain.compute.tokens
    assert torch.equal(cached.hard_losses(prompt, target, mask)[1],
                       plain.hard_losses(prompt, target, mask)[1])
    other = SpanContext.single((1, 70, 71, 72, 73, 74))  # the cache must not outlive it
    cached.use_context(other)
    plain.use_context(other)
    a, b = cached.hard_losses(prompt, target, mask)[0], plain.hard_losses(prompt, target, mask)[0]
    assert torch.allclose(a, b, atol=1e-4)


def test_variant_losses_equal_hard_losses_for_less_compute(any_tiny):
    g = torch.Generator().manual_seed(0)
    for before, after in (((), ()), ((1,), ()), ((1, 40, 41, 42, 43, 44), (20, 21))):
        dlm = DifferentiableLM(any_tiny, context=SpanContext.single(before, after))
        B, W, N, M = 3, 24, 8, 5
        base = torch.randint(3, 90, (B, N), generator=g)
        cand = base[:, None].repeat(1, W, 1)
        pos = torch.randint(N, (B, W), generator=g)
        cand.scatter_(2, pos[..., None], torch.randint(3, 90, (B, W, 1), generator=g))
        cand[:, 0] = base  # an unchanged candidate too
        cand[:, 1, 2:5] = 7  # and one with several changes
        target = torch.randint(3, 90, (B, M), generator=g)
        mask = torch.ones(B, M, dtype=torch.bool)
        mask[0, -2:] = False
        for objective in (Objective("ce"), Objective("cw"), Objective("cw-prefix", 1.0, 4.0)):
            before_tokens = dlm.compute.tokens
            loss, exact = dlm.variant_losses(base, cand.reshape(B * W, N),
                                             torch.arange(B).repeat_interleave(W), target,
                                             mask, chunk=16, objective=objective)
            variant_tokens = dlm.compute.tokens - before_tokens
            ref_loss, ref_exact = dlm.hard_losses(
                cand.reshape(B * W, N), target.repeat_interleave(W, 0),
                mask.repeat_interleave(W, 0), objective=objective)
            assert torch.allclose(loss, ref_loss, atol=1e-4)
            assert torch.equal(exact, ref_exact)
            assert variant_tokens < dlm.compute.tokens - before_tokens - variant_tokens
