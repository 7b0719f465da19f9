import pytest
import torch
import torch.nn.functional as F

from dlmi.model.dlm import DifferentiableLM, masked_cross_entropy


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


def test_margin_loss_is_negative_exactly_where_the_target_wins():
    from dlmi.model.dlm import masked_margin_loss

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
    from dlmi.model.dlm import masked_margin_loss

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
    from dlmi.model.dlm import masked_margin_loss, target_loss

    # Position 0 won by 1, position 1 lost by 2, position 2 lost by 1 (V = 3).
    logits = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 1.0]]])
    target = torch.tensor([[0, 2, 0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    # cw-prefix: (-1 + 2 + 1) / 3; the first miss (position 1) counted 4 times: (-1 + 8 + 1) / 3.
    weighted = masked_margin_loss(logits, target, mask, 1.0, after_miss=1.0, miss_weight=4.0)
    assert weighted.item() == pytest.approx(8 / 3)
    assert target_loss(logits, target, mask, "cw-prefix", 1.0, 4.0).item() == pytest.approx(8 / 3)
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


def test_loss_and_exact_match_the_direct_formulas_and_a_tie_is_never_proof():
    from dlmi.model.dlm import loss_and_exact, target_and_rival, target_loss

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
        loss, exact = loss_and_exact(logits, target, mask, objective)
        assert torch.allclose(loss, target_loss(logits, target, mask, objective))
        assert exact.tolist() == [True] * 3 + [False] * 3
    # The lost position masked out: proof again.
    unscored = mask.clone()
    unscored[:, 2] = False
    assert loss_and_exact(logits, target, unscored, "cw-prefix")[1].all()
    # A tie for the top is not proof, whatever index the target has.
    tied = torch.zeros(1, 1, 5)
    tied[0, 0, 1] = tied[0, 0, 3] = 2.0
    for token in (1, 3):
        assert not loss_and_exact(tied, torch.tensor([[token]]), mask[:1, :1], "cw")[1].item()


def test_greedy_margins_read_the_teacher_forced_logits_up_to_the_first_miss(tiny_lm):
    from dlmi.model.dlm import target_and_rival

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
