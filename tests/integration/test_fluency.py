"""The optional fluency term: the prompt's mean NLL under the model, traded against success."""

import math

import pytest
import torch
import torch.nn.functional as F

import dlmi
from dlmi.model.context import SpanContext
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.perplexity import perplexity


@pytest.mark.parametrize("before", [(), (10, 11)])
def test_penalty_of_a_hard_prompt_is_its_log_perplexity(tiny_lm, before):
    dlm = DifferentiableLM(tiny_lm, context=SpanContext.single(before))
    dlm.fluency = 2.0
    ids = torch.tensor([[5, 9, 40, 3]])
    one_hot = F.one_hot(ids, dlm.vocab_size).float()
    got = dlm.fluency_penalty(dlm.soft_embed(one_hot), one_hot)
    # perplexity() scores tokens 2..N given the context; with no context, the first token
    # has no prediction, as in the penalty.
    ppl = perplexity(tiny_lm, [9, 40, 3], context=list(before) + [5])
    assert got.item() == pytest.approx(2.0 * math.log(ppl), rel=1e-4)
    losses, _ = dlm.hard_losses(ids, torch.tensor([[30, 31]]), torch.ones(1, 2, dtype=bool))
    dlm.fluency = 0.0
    plain, _ = dlm.hard_losses(ids, torch.tensor([[30, 31]]), torch.ones(1, 2, dtype=bool))
    assert (losses - plain).item() == pytest.approx(got.item(), rel=1e-4)


@pytest.mark.parametrize("before", [(), (10, 11)])
def test_prompt_log_probs_predict_each_prompt_token_from_what_precedes_it(tiny_lm, before):
    dlm = DifferentiableLM(tiny_lm, context=SpanContext.single(before))
    ids = [5, 9, 40, 3]
    logp, first = dlm.prompt_log_probs(dlm.embed_prompt(torch.tensor([ids])))
    assert first == (0 if before else 1) and logp.shape == (1, 4 - first, dlm.vocab_size)
    with torch.no_grad():  # the model on the plain token sequence, by hand
        full = tiny_lm.model(input_ids=torch.tensor([list(before) + ids])).logits[0]
    for i in range(4 - first):
        p = first + i  # prompt position predicted by entry i
        expected = full[len(before) + p - 1].log_softmax(-1)
        assert torch.allclose(logp[0, i], expected, atol=1e-4)


def test_a_fluency_weight_finds_more_likely_prompts(tiny_lm):
    def mean_ppl(weight):
        rs = [dlmi.invert(tiny_lm, "hello", steps=30, prompt_length=6, seed=s, fluency=weight)
              for s in range(3)]
        return sum(r.prompt_perplexity for r in rs) / len(rs)

    # Measured: mean perplexity 101.8 at weight 0, 76.6 at weight 5 (LCS 0.6 -> 0.07).
    assert mean_ppl(5.0) < 0.9 * mean_ppl(0.0)
