"""Soft prompts: learned embeddings, judged by their own greedy output, saved as PEFT adapters
that give identical logits through PEFT and through dlmi."""

import json
import warnings

import pytest
import torch

import dlmi
from dlmi.cli import main
from dlmi.errors import UsageError
from dlmi.model.dlm import DifferentiableLM
from dlmi.model.peft_adapter import load_soft_prompt, save_soft_prompt
from dlmi.model.tiny import build_tiny_model
from tests.conftest import hidden_prompt_target


def test_soft_prompt_is_judged_by_its_own_greedy_output(tiny_lm):
    target = hidden_prompt_target(tiny_lm, 1, target_len=3)
    r = dlmi.invert(tiny_lm, target, method="soft-prompt", prompt_length=4, steps=64,
                    eval_every=4)
    # Measured: the embeddings decode to the target at step 4 (lr 0.01).
    assert r.embedding_exact and r.embedding_solved_at_step <= 16
    out = DifferentiableLM(tiny_lm).greedy_decode(None, 3, prompt_embeds=r.embeddings[None])
    assert out[0].tolist() == target
    assert r.embeddings.shape == (4, tiny_lm.model.config.hidden_size)
    assert "embeddings" not in r.to_dict() and r.to_dict()["embedding_exact"] is True


def test_saved_soft_prompt_gives_identical_logits_in_peft_and_dlmi(tmp_path):
    peft = pytest.importorskip("peft")
    model, tokenizer = build_tiny_model()
    r = dlmi.invert((model, tokenizer), [40, 41, 42], method="soft-prompt", steps=5,
                    prompt_length=3)
    save_soft_prompt(tmp_path / "sp", r.embeddings, model, "tiny-random")
    config = json.loads((tmp_path / "sp" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["task_type"] == "CAUSAL_LM"
    assert config["num_virtual_tokens"] == 3 and config["token_dim"] == 64
    loaded = load_soft_prompt(tmp_path / "sp")
    assert torch.equal(loaded, r.embeddings)
    base, _ = build_tiny_model()
    with warnings.catch_warnings():  # PEFT's own deprecation notices are not ours
        warnings.simplefilter("ignore")
        wrapped = peft.PeftModel.from_pretrained(base, str(tmp_path / "sp")).eval()
        target = torch.tensor([[40, 41, 42]])
        with torch.no_grad():
            theirs = wrapped(input_ids=target).logits  # (1, 3 virtual + 3, V)
    lm = dlmi.LoadedModel(model=model, tokenizer=tokenizer, spec="t", device=torch.device("cpu"))
    ours = DifferentiableLM(lm).teacher_forced_logits(loaded[None], target, backward=False)
    # PEFT's logits at the last virtual token and the first two target tokens predict them.
    assert torch.allclose(theirs[:, 2:5], ours, atol=1e-5)


def test_init_from_starts_where_the_saved_prompt_is(tiny_lm, tmp_path):
    start = torch.randn(4, tiny_lm.model.config.hidden_size)
    save_soft_prompt(tmp_path / "sp", start, tiny_lm.model, "tiny-random")
    from dlmi.inversion.config_builder import build_config
    from dlmi.methods.base import Batch, row_generators
    from dlmi.methods.soft_prompt import SoftPrompt

    cfg = build_config("soft-prompt", overrides={"prompt_length": 4,
                                                 "init_from": str(tmp_path / "sp")})
    method = SoftPrompt(cfg, DifferentiableLM(tiny_lm))
    batch = Batch(torch.tensor([[40, 41]]), torch.ones(1, 2, dtype=torch.bool),
                  row_generators([0], torch.device("cpu")))
    assert torch.equal(method.init_state(batch).P.detach()[0], start)
    with pytest.raises(UsageError, match="--prompt-length 4"):
        bad = build_config("soft-prompt", overrides={"prompt_length": 5,
                                                     "init_from": str(tmp_path / "sp")})
        SoftPrompt(bad, DifferentiableLM(tiny_lm)).init_state(batch)


def test_cli_save_writes_the_discrete_prompts_embeddings(tmp_path, tiny_lm, capsys):
    code = main(["invert", "--model", "tiny-random", "--device", "cpu", "--target", "abc",
                 "--steps", "3", "--prompt-length", "3", "--save", str(tmp_path / "hp"),
                 "--json", str(tmp_path / "r.jsonl"), "--quiet"])
    assert code == 0
    row = json.loads((tmp_path / "r.jsonl").read_text())
    saved = load_soft_prompt(tmp_path / "hp")
    W = tiny_lm.model.get_input_embeddings().weight
    assert torch.equal(saved, W[torch.tensor(row["prompt_ids"])])
    assert "PEFT prompt-tuning adapter" in capsys.readouterr().out
