import pytest
import torch
import torch.nn.functional as F

from dlmi.model.dlm import DifferentiableLM
from dlmi.model.objective import masked_cross_entropy


def test_one_hot_soft_embedding_equals_hard_embedding(any_tiny):
    dlm = DifferentiableLM(any_tiny)
    ids = torch.tensor([[5, 9, 40, 3], [7, 7, 1, 60]])
    soft = dlm.soft_embed(F.one_hot(ids, dlm.vocab_size).float())
    assert torch.allclose(soft, dlm.hard_embed(ids), atol=1e-6)


@pytest.mark.parametrize("prefix", [None, [10, 11]])
def test_teacher_forced_logits_match_model_logits(any_tiny, prefix):
    dlm = DifferentiableLM(any_tiny, prefix_ids=prefix)
    prompt = torch.tensor([[5, 9, 40, 3], [7, 8, 20, 60]])
    target = torch.tensor([[12, 13, 14], [30, 31, 32]])
    soft = dlm.soft_embed(F.one_hot(prompt, dlm.vocab_size).float())
    got = dlm.teacher_forced_logits(soft, target)  # (B, M, V)
    pre = torch.tensor([prefix or []] * 2, dtype=torch.long)
    full = torch.cat([pre, prompt, target], dim=1)
    ref = any_tiny.model(full).logits[:, -target.shape[1] - 1 : -1]
    assert got.shape == (2, 3, dlm.vocab_size)
    assert torch.allclose(got, ref, atol=1e-4)


def test_greedy_decode_matches_generate(any_tiny):
    dlm = DifferentiableLM(any_tiny)
    prompt = torch.tensor([[5, 9, 40, 3]])
    out = dlm.greedy_decode(prompt, 8)
    ref = any_tiny.model.generate(prompt, max_new_tokens=8, do_sample=False,
                                  eos_token_id=None, pad_token_id=2)[:, 4:]
    eos = any_tiny.eos_token_id
    if (ref == eos).any():  # after EoS we force EoS; compare up to and including it
        first = int((ref[0] == eos).nonzero()[0])
        ref = ref[:, : first + 1]
        out = out[:, : first + 1]
    assert torch.equal(out, ref)


def test_greedy_decode_pads_with_eos_after_eos(tiny_lm, monkeypatch):
    dlm = DifferentiableLM(tiny_lm)
    eos = tiny_lm.eos_token_id
    calls = {"n": 0}
    real = tiny_lm.model.forward

    def fake_forward(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # the second decoded token is EoS
            out.logits[:, -1, eos] = 1e9
        return out

    monkeypatch.setattr(tiny_lm.model, "forward", fake_forward)
    out = dlm.greedy_decode(torch.tensor([[5, 9, 40]]), 6)[0].tolist()
    assert out[1:] == [eos] * 5


def test_hidden_prompt_hits_its_own_greedy_output(any_tiny):
    dlm = DifferentiableLM(any_tiny)
    prompt = torch.tensor([[5, 9, 40, 3], [22, 23, 24, 25]])
    target = dlm.greedy_decode(prompt, 6)
    assert dlm.teacher_forced_hits(prompt, target).all()
    other = torch.tensor([[50, 51, 52, 53], [60, 61, 62, 63]])
    assert not dlm.teacher_forced_hits(other, target).all()


def test_target_mask_stops_after_first_eos(tiny_lm):
    dlm = DifferentiableLM(tiny_lm)
    eos = tiny_lm.eos_token_id
    target = torch.tensor([[5, eos, eos, eos], [5, 6, 7, 8], [5, 6, 0, 0]])
    mask = dlm.target_mask(target, torch.tensor([4, 4, 2]))
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, True, False, False]]


def test_free_running_rollout_is_differentiable(any_tiny):
    dlm = DifferentiableLM(any_tiny)
    Z = torch.randn(2, 4, dlm.vocab_size, requires_grad=True)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    logits = dlm.free_running_logits(dlm.soft_embed(Z.softmax(-1)), 5, gens)
    assert logits.shape == (2, 5, dlm.vocab_size)
    loss = masked_cross_entropy(logits, torch.full((2, 5), 7), torch.ones(2, 5, dtype=torch.bool))
    loss.sum().backward()
    assert Z.grad is not None and Z.grad.abs().sum() > 0


def test_masked_cross_entropy_ignores_masked_positions():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 1] = 10.0
    target = torch.tensor([[1, 2, 3]])
    only_first = masked_cross_entropy(logits, target, torch.tensor([[True, False, False]]))
    everything = masked_cross_entropy(logits, target, torch.ones(1, 3, dtype=torch.bool))
    assert only_first.item() < 1e-3 < everything.item()


def test_subnormals_are_flushed_during_a_run_only():
    from dlmi.model.numerics import subnormals_flushed

    tiny = torch.tensor([1e-40])  # subnormal in float32
    assert tiny.item() != 0.0
    with subnormals_flushed():
        assert (tiny * 1.0).item() == 0.0
    assert (tiny * 1.0).item() != 0.0


@pytest.mark.parametrize("variants", [False, True])
def test_no_grad_scoring_halves_its_chunk_on_out_of_memory(tiny_lm, variants):
    # A device that cannot hold more than 4 sequences per forward: the scores are those of a
    # run in chunks of 4, and later calls start from 4.
    dlm = DifferentiableLM(tiny_lm)
    g = torch.Generator().manual_seed(0)
    base = torch.randint(3, 100, (2, 5), generator=g)
    rows = torch.arange(2).repeat_interleave(6)
    cand = base[rows].clone()
    cand[torch.arange(12), torch.arange(12) % 5] = torch.randint(3, 100, (12,), generator=g)
    target = torch.randint(3, 100, (2, 4), generator=g)
    mask = torch.ones_like(target, dtype=torch.bool)

    def score(chunk):
        if variants:
            return dlm.variant_losses(base, cand, rows, target, mask, chunk, min_forwards=1)
        return dlm.hard_losses(cand, target[rows], mask[rows], chunk)

    expected = score(4)
    real_forward = dlm.model.forward

    def small_device(*args, **kwargs):
        embeds = kwargs.get("inputs_embeds")
        if embeds is not None and embeds.shape[0] > 4:
            raise torch.OutOfMemoryError("simulated")
        return real_forward(*args, **kwargs)

    dlm.model.forward = small_device
    try:
        loss, exact = score(64)
    finally:
        del dlm.model.forward
    torch.testing.assert_close(loss, expected[0])
    assert torch.equal(exact, expected[1]) and dlm._chunk_fits == 4


def test_greedy_margins_read_the_teacher_forced_logits_up_to_the_first_miss(tiny_lm):
    from dlmi.model.objective import target_and_rival

    dlm = DifferentiableLM(tiny_lm)
    prompt = torch.tensor([[5, 9, 40, 3], [7, 8, 20, 60]])
    greedy = dlm.greedy_decode(prompt, 6)
    # Row 0's target is its own greedy output with position 3 changed: positions 0-3 are
    # read under teacher forcing, 4-5 after the model's own token; row 1's is all its own.
    target = greedy.clone()
    target[0, 3] = (target[0, 3] + 1) % dlm.vocab_size
    out, wanted, rival, lse = dlm.greedy_margins(prompt, target)
    assert torch.equal(out, greedy)
    forced = dlm.teacher_forced_logits(dlm.embed_prompt(prompt), target, backward=False)
    ref_t, ref_r = target_and_rival(forced, target)
    assert torch.allclose(wanted[0, :4], ref_t[0, :4], atol=1e-4)
    assert torch.allclose(rival[0, :4], ref_r[0, :4], atol=1e-4)
    assert torch.allclose(wanted[1], ref_t[1], atol=1e-4)
    assert torch.allclose(lse[1], forced[1].float().logsumexp(-1), atol=1e-4)
    assert bool(wanted[0, 3] < rival[0, 3])  # the changed token is not the model's choice
    assert not torch.allclose(wanted[0, 4:], ref_t[0, 4:], atol=1e-4)  # the course differs
