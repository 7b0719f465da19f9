"""dlmi tune: one prompt over pairs in a template, judged by greedy decoding."""

import json

import pytest
import torch

import dlmi
from dlmi.cli import main
from dlmi.errors import UsageError
from dlmi.model.models import LoadedModel
from dlmi.model.tiny import build_tiny_model, build_tiny_tokenizer
from dlmi.prompting.dataset import Pair
from dlmi.prompting.template import Template, parse_template
from dlmi.prompting.tune import greedy_outputs, tune_prompt

CHAT = ("{% for m in messages %}<s>{{ m['role'] }}:{{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}")


def test_text_template_puts_the_span_between_its_sides(tiny_lm):
    t = parse_template("{prompt}\nQ: {input}\nA:")
    assert t.render(tiny_lm.tokenizer, "2+2") == ("", "\nQ: 2+2\nA:")
    assert t.ids(tiny_lm, "x") == ([], tiny_lm.encode("\nQ: x\nA:"))
    braces = parse_template("{a} {prompt} {input}")  # other braces are text
    assert braces.render(tiny_lm.tokenizer, "in") == ("{a} ", " in")


def test_chat_template_renders_messages_with_the_generation_prompt(tiny_lm):
    tok = build_tiny_tokenizer()
    tok.chat_template = CHAT
    t = parse_template('[{"role": "system", "content": "be {prompt}"}, '
                       '{"role": "user", "content": "{input}?"}]')
    assert t.is_chat and t.uses_input
    assert t.render(tok, "hi") == ("<s>system:be ", "</s><s>user:hi?</s><s>assistant:")
    assert parse_template("{prompt} {input}", chat=True).render(tok, "x") == (
        "<s>user:", " x</s><s>assistant:")


@pytest.mark.parametrize("spec,fragment", [
    ("{input}", "exactly one"), ("{prompt} {prompt}", "exactly one"),
    ('[{"role": "user"}]', "string values"), ("[1, 2", "not valid JSON")])
def test_bad_templates_say_what_to_change(spec, fragment):
    with pytest.raises(UsageError, match=fragment):
        parse_template(spec)


def test_a_single_pair_without_input_is_invert(tiny_lm):
    target = "hello"
    opts = dict(steps=12, prompt_length=4, seed=3)
    inverted = dlmi.invert(tiny_lm, target, **opts)
    tuned = tune_prompt(tiny_lm, [Pair("", target)], Template(text="{prompt}"), **opts)
    assert tuned.prompt_ids == inverted.prompt_ids
    assert [h["loss"] for h in tuned.training["history"]] == [
        h["loss"] for h in inverted.history]


def hidden_task(lm, template, seed=0, n=12, out_tokens=3):
    """Pairs whose outputs a hidden 4-token prompt produces: a prompt that fits them exists."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randint(3, lm.vocab_size, (4,), generator=g).tolist()
    inputs = ["".join(chr(97 + int(c)) for c in torch.randint(0, 26, (2,), generator=g))
              for _ in range(n)]
    placeholder = lm.decode([5] * out_tokens)
    outs = greedy_outputs(lm, template, [Pair(i, placeholder) for i in inputs], hidden)
    return [Pair(i, lm.decode(o)) for i, o in zip(inputs, outs, strict=True)]


def test_tuning_raises_held_out_accuracy(tiny_lm):
    template = Template(text="{prompt}:{input}=")
    pairs = hidden_task(tiny_lm, template, seed=3)
    r = tune_prompt(tiny_lm, pairs[:6], template, pairs[6:], steps=200, prompt_length=4)
    # Measured: held-out exact match 0/6 -> 5/6, mean LCS 0.06 -> 0.89 (seed 3, 8 steps);
    # over seeds 0-5 the mean held-out accuracy goes 0.03 -> 0.50.
    assert r.eval_on == "eval" and len(r.pairs) == 6
    assert r.accuracy_after >= r.accuracy_before + 0.5
    assert r.lcs_after > r.lcs_before
    # The reported outputs are the greedy outputs of the returned prompt.
    again = greedy_outputs(tiny_lm, template, pairs[6:], r.prompt_ids)
    assert [tiny_lm.decode(o) for o in again] == [p.output_after for p in r.pairs]


def test_tune_takes_a_transformers_model_and_leaves_it_as_it_was():
    model, tokenizer = build_tiny_model()
    model.train()
    before = [p.requires_grad for p in model.parameters()]
    r = dlmi.tune((model, tokenizer), [Pair("", "ab")], "{prompt}", steps=3, prompt_length=2)
    assert r.steps == 3
    assert model.training and [p.requires_grad for p in model.parameters()] == before


def test_tune_cli_writes_the_result_object(tmp_path, capsys):
    data = tmp_path / "train.jsonl"
    data.write_text('{"input": "a", "output": " b"}\n{"input": "c", "output": " d"}\n')
    out = tmp_path / "tune.json"
    code = main(["tune", "--model", "tiny-random", "--device", "cpu", "--data", str(data),
                 "--steps", "4", "--prompt-length", "3", "--json", str(out), "--quiet"])
    assert code == 0
    result = json.loads(out.read_text())
    for key in ("accuracy_before", "accuracy_after", "lcs_before", "lcs_after", "prompt_ids",
                "prompt_text", "pairs"):
        assert key in result
    assert len(result["prompt_ids"]) == 3 and len(result["pairs"]) == 2
    assert "exact" in capsys.readouterr().out


def test_chat_tuning_runs_on_the_tiny_model():
    model, tokenizer = build_tiny_model()
    tokenizer.chat_template = CHAT
    lm = LoadedModel(model=model, tokenizer=tokenizer, spec="tiny-chat",
                     device=torch.device("cpu"))
    template = parse_template("{prompt} {input}", chat=True)
    r = tune_prompt(lm, [Pair("a", "b"), Pair("cd", "e")], template, steps=4, prompt_length=2)
    assert r.template.startswith("[") and len(r.prompt_ids) == 2


def test_mini_batches_of_pairs_still_judge_every_pair(tiny_lm):
    template = Template(text="{prompt}:{input}=")
    pairs = hidden_task(tiny_lm, template, seed=3)
    r = tune_prompt(tiny_lm, pairs[:6], template, pairs[6:], steps=64, prompt_length=4,
                    pairs_per_step=2)
    again = greedy_outputs(tiny_lm, template, pairs[6:], r.prompt_ids)
    assert [tiny_lm.decode(o) for o in again] == [p.output_after for p in r.pairs]
    # Measured: held-out exact 0/6 -> 2/6 with 2 of 6 pairs per step (seed 3, 64 steps;
    # all pairs per step: 5/6 in 8 steps).
    assert r.accuracy_after > r.accuracy_before
    # Each step's forward ran on 2 pairs: the compute per step is about a third.
    full = tune_prompt(tiny_lm, pairs[:6], template, steps=4, prompt_length=4, early_stop=False)
    part = tune_prompt(tiny_lm, pairs[:6], template, steps=4, prompt_length=4, early_stop=False,
                       pairs_per_step=2)
    assert part.training["compute"]["flops"] < 0.7 * full.training["compute"]["flops"]
