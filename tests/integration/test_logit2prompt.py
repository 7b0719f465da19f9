"""logit2prompt on tiny-random: unrolling, collect/train/invert end to end, resume, defences."""

import json

import pytest
import torch

from dlmi.cli import main
from dlmi.logit2prompt.data import collect, load_shards, next_token_logprobs, shard_paths
from dlmi.logit2prompt.defences import noised, temperature_scaled, top_k_truncated
from dlmi.logit2prompt.invert import invert_distribution, token_f1
from dlmi.logit2prompt.model import InverterConfig, Logit2Prompt, Unroller
from dlmi.logit2prompt.train import TrainConfig, train

PROMPTS = [f"{a}{b} {c}" for a in "abcdefgh" for b in "xyz" for c in "pq"]  # 48 prompts


def test_unrolling_cuts_the_distribution_into_width_chunks():
    cfg = InverterConfig(vocab_size=99, d_model=32, layers=1, heads=1, d_ff=64)
    u = Unroller(cfg)
    x = torch.randn(3, 99).log_softmax(-1)
    assert cfg.chunks == 4 and u(x).shape == (3, 4, 32)
    u.observe(x)
    assert torch.allclose(u.mean, x.clamp_min(-30).mean(0))
    # Each chunk reads its own slice of the vocabulary: changing token 40 changes chunk 1 only.
    y = x.clone()
    y[0, 40] += 5
    changed = (u(y) - u(x)).abs().sum(-1)[0] > 0
    assert changed.tolist() == [False, True, False, False]


def test_collected_logprobs_are_the_models(tiny_lm, tmp_path):
    collect(tiny_lm, PROMPTS[:5], tmp_path / "d", shard_size=2)
    ids, lp = load_shards(tmp_path / "d")
    assert len(shard_paths(tmp_path / "d")) == 3 and lp.dtype == torch.float16
    ref = tiny_lm.model(torch.tensor([ids[3]])).logits[0, -1].log_softmax(-1)
    assert torch.allclose(lp[3].float(), ref, atol=2e-2)
    # Left padding in a batch scores each prompt as if alone.
    alone = next_token_logprobs(tiny_lm, [ids[0]])
    together = next_token_logprobs(tiny_lm, [ids[0], ids[1] + ids[2]])
    assert torch.allclose(alone[0], together[0], atol=1e-5)


def test_collect_resumes_after_its_finished_shards(tiny_lm, tmp_path):
    folder = tmp_path / "d"
    collect(tiny_lm, PROMPTS[:6], folder, shard_size=2)
    first = shard_paths(folder)[0].stat().st_mtime_ns
    shard_paths(folder)[-1].unlink()  # as if killed while writing the last shard
    collect(tiny_lm, PROMPTS[:6], folder, shard_size=2)
    assert len(shard_paths(folder)) == 3
    assert shard_paths(folder)[0].stat().st_mtime_ns == first  # not redone
    assert len(load_shards(folder)[0]) == 6


@pytest.fixture(scope="module")
def data(tiny_lm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("l2p") / "data"
    collect(tiny_lm, PROMPTS, folder, shard_size=16)
    return folder


def test_train_resumes_to_the_same_weights(tiny_lm, data, tmp_path):
    cfg = dict(batch_size=8, lr=1e-3, eval_every=4, save_every=4)
    train(data, tmp_path / "a", TrainConfig(steps=8, **cfg), tiny_lm, width=64, layers=1,
          device="cpu")
    train(data, tmp_path / "b", TrainConfig(steps=4, **cfg), tiny_lm, width=64, layers=1,
          device="cpu")
    resumed = train(data, tmp_path / "b", TrainConfig(steps=8, **cfg), tiny_lm, width=64,
                    layers=1, device="cpu")
    assert resumed["step"] == 8
    a, b = Logit2Prompt.load(tmp_path / "a"), Logit2Prompt.load(tmp_path / "b")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(x, y, atol=1e-6), name


def test_a_loaded_checkpoint_writes_the_same_prompts(tiny_lm, data, tmp_path):
    train(data, tmp_path / "c", TrainConfig(steps=6, batch_size=8), tiny_lm, width=64,
          layers=1, device="cpu")
    _, lp = load_shards(data)
    once = Logit2Prompt.load(tmp_path / "c").write(lp[:2], beams=2, candidates=2)
    again = Logit2Prompt.load(tmp_path / "c").write(lp[:2], beams=2, candidates=2)
    assert once == again and len(once) == 2 and len(once[0]) == 2


def test_cli_collect_train_invert_eval(data, tmp_path, capsys):
    tiny = ["--model", "tiny-random", "--device", "cpu", "--quiet"]
    ck = str(tmp_path / "ck")
    assert main(["l2p", "train", "--data", str(data), "--out", ck, "--steps", "4",
                 "--width", "64", "--layers", "1", *tiny]) == 0
    out = tmp_path / "inv.json"
    assert main(["l2p", "invert", "--checkpoint", ck, "--prompt", "ax p", "--beams", "2",
                 "--candidates", "2", "--json", str(out), *tiny]) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 2
    for key in ("prompt_text", "output_text", "lcs_ratio", "exact_match", "token_f1", "bleu"):
        assert key in rows[0]
    assert main(["l2p", "eval", "--checkpoint", ck, "--data", str(data), "--limit", "1",
                 *tiny]) == 0
    table = capsys.readouterr().out
    assert "| none |" in table and "| top_k=10 |" in table


def test_invert_metrics_against_the_hidden_prompt(tiny_lm, data, tmp_path):
    train(data, tmp_path / "m", TrainConfig(steps=2, batch_size=8), tiny_lm, width=64,
          layers=1, device="cpu")
    ids, lp = load_shards(data)
    found = invert_distribution(Logit2Prompt.load(tmp_path / "m"), tiny_lm, lp[0].float(),
                                hidden_ids=ids[0], beams=2, candidates=2)
    for c in found:
        assert c.token_f1 == token_f1(c.prompt_ids, ids[0]) and 0 <= c.bleu <= 100
    assert token_f1([1, 2, 3], [1, 2, 3]) == 1.0 and token_f1([1, 2], [3]) == 0.0


def test_defences_change_the_distribution_as_documented():
    lp = torch.randn(2, 50).log_softmax(-1)
    t = temperature_scaled(lp, 2.0)
    assert torch.allclose(t.exp().sum(-1), torch.ones(2))
    assert torch.allclose(t, (lp / 2).log_softmax(-1))
    assert t.exp().max() < lp.exp().max()  # flatter
    k = top_k_truncated(lp, 5)
    assert ((k.exp() > 0).sum(-1) == 5).all()
    assert torch.equal(k.topk(5).indices.sort().values, lp.topk(5).indices.sort().values)
    assert torch.allclose(k.exp().sum(-1), torch.ones(2))
    n1, n2 = noised(lp, 1.0, seed=3), noised(lp, 1.0, seed=3)
    assert torch.equal(n1, n2) and not torch.allclose(n1, lp)
    assert torch.allclose(n1.exp().sum(-1), torch.ones(2))
