import torch

from dlmi.methods.base import Batch, distinct_per_row, row_generators, walk_on
from dlmi.methods.gcg import sample_swaps
from dlmi.methods.soda import SODA, SODAConfig
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.roundtrip import mended, round_trips


def soda_setup(tiny_lm, **cfg):
    dlm = DifferentiableLM(tiny_lm)
    target = torch.tensor([[10, 11, 12]])
    batch = Batch(target, torch.ones_like(target, dtype=torch.bool), row_generators([0], "cpu"))
    method = SODA(SODAConfig(prompt_length=3, **cfg), dlm)
    return method, method.init_state(batch), batch


def test_soda_first_step_has_no_bias_correction_and_decays(tiny_lm):
    method, state, batch = soda_setup(tiny_lm)
    assert torch.count_nonzero(state.Z) == 0  # zeros init (Table 5)
    Z0 = state.Z.detach().clone()
    # Recompute the gradient the step will see.
    p = torch.softmax(state.Z / 0.05, -1)
    from dlmi.model.objective import masked_cross_entropy

    logits = method.dlm.teacher_forced_logits(method.dlm.soft_embed(p), batch.target_ids)
    (g,) = torch.autograd.grad(masked_cross_entropy(logits, batch.target_ids, batch.mask).sum(),
                               state.Z)
    method.step(state, batch, 1)
    m, v = 0.1 * g, 0.005 * g * g  # (1 - beta1) g, (1 - beta2) g^2, no bias correction
    expected = (Z0 - 0.03 * m / (v.sqrt() + 1e-8)) * 0.98
    assert torch.allclose(state.Z.detach(), expected, atol=1e-5)


def test_soda_resets_optimiser_and_reinitialises(tiny_lm):
    method, state, batch = soda_setup(tiny_lm, reset_every=3, reinit_every=5)
    for step in range(1, 4):
        method.step(state, batch, step)
    assert state.optimizer.t == 0  # reset after step 3
    method.step(state, batch, 4)
    assert state.optimizer.t == 1
    method.step(state, batch, 5)  # re-initialisation: fresh N(0, 1) logits
    assert state.optimizer.t == 0 and 0.8 < state.Z.detach().std().item() < 1.2


def test_gcg_swaps_change_one_position_to_a_top_k_token():
    prompts = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    top = torch.arange(2 * 4 * 3).view(2, 4, 3) + 50  # (B, N, K) distinct ids >= 50
    cand = sample_swaps(prompts, top, 8, row_generators([0, 1], "cpu"))
    assert cand.shape == (2, 8, 4)
    for b in range(2):
        for w in range(8):
            diff = (cand[b, w] != prompts[b]).nonzero().flatten().tolist()
            assert len(diff) == 1
            pos = diff[0]
            assert int(cand[b, w, pos]) in top[b, pos].tolist()
    # positions are spread evenly: each of the 4 positions is swapped twice out of 8
    changed = (cand != prompts[:, None]).float().sum(1)
    assert torch.equal(changed, torch.full((2, 4), 2.0))


class MergingTokenizer:
    """Vocabulary a, b, ab with greedy longest-match encoding: [a, b] decodes to "ab", which
    re-encodes as the single token ab, so that prompt does not round-trip."""

    pieces = ["a", "b", "ab"]

    def batch_decode(self, rows, **kwargs):
        return ["".join(self.pieces[i] for i in row) for row in rows]

    def __call__(self, texts, add_special_tokens=False):
        out = []
        for text in texts:
            ids, i = [], 0
            while i < len(text):
                if text.startswith("ab", i):
                    ids.append(2)
                    i += 2
                else:
                    ids.append(self.pieces.index(text[i]))
                    i += 1
            out.append(ids)
        return {"input_ids": out}


def test_gcg_filter_drops_prompts_that_do_not_round_trip():
    from types import SimpleNamespace

    lm = SimpleNamespace(tokenizer=MergingTokenizer())
    cand = torch.tensor([[[2, 2], [0, 1], [1, 0]]])  # "abab" ok, "ab" merges, "ba" ok
    assert round_trips(lm, [], cand).tolist() == [[True, False, True]]


def _merging_lm():
    from types import SimpleNamespace

    tok = MergingTokenizer()
    return SimpleNamespace(tokenizer=tok, decode=lambda ids: tok.batch_decode([ids])[0],
                           encode=lambda text: tok([text])["input_ids"][0])


def test_mended_replaces_the_first_token_that_breaks_the_round_trip_by_its_first_good_rival():
    lm = _merging_lm()
    # a b b: "abb" re-encodes as ab b. Position 1's rivals: b (fails again) then ab.
    ranked = [[1], [1, 2], [0]]
    assert mended(lm, [], [0, 1, 1], ranked) == [0, 2, 1]  # "aabb" -> a ab b
    assert mended(lm, [], [1, 1, 0], ranked) == [1, 1, 0]  # "bba" passes: left as it is
    assert mended(lm, [], [1, 0, 1], ranked) == [1, 0, 0]  # "bab" -> b ab: the last is a
    # No rival passes: the token stays (the search filters such prompts).
    assert mended(lm, [], [0, 1], [[1], [1]]) == [0, 1]
    # The context counts: after "a", a prompt starting with b merges with it.
    assert mended(lm, [0], [1, 0], [[0], [1]]) == [0, 0]


def test_distinct_per_row_scores_each_prompt_of_a_row_once_and_maps_every_prompt_back():
    # Row 0 holds one prompt twice; row 1 holds row 0's first prompt, which is distinct there.
    prompts = torch.tensor([[[3, 1], [2, 2], [3, 1]],
                            [[3, 1], [0, 4], [0, 4]]])  # (B=2, K=3, N=2)
    rows, distinct, back = distinct_per_row(prompts)
    assert distinct.shape == (4, 2) and rows.tolist().count(0) == 2
    assert back.shape == (2, 3)
    assert torch.equal(distinct[back], prompts)  # every prompt found again in place
    assert torch.equal(rows[back], torch.tensor([[0, 0, 0], [1, 1, 1]]))


def test_walk_on_keeps_the_newest_prompts_first_up_to_its_length():
    a, b, c = (torch.full((1, 2), v) for v in (1, 2, 3))
    walk = walk_on(None, a, 2)
    walk = walk_on(walk, b, 2)
    assert walk[0, :, 0].tolist() == [2, 1]
    assert walk_on(walk, c, 2)[0, :, 0].tolist() == [3, 2]
