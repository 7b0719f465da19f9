import json

import torch

from dlmi.cli import main
from dlmi.evaluation.targets import generate_targets


def ranks_under_model(lm, row):
    """Rank (1 = most likely) of each target token under the model, given the tokens before."""
    ids = torch.tensor([row["start_ids"] + row["target_ids"]])
    logits = lm.model(ids).logits[0, len(row["start_ids"]) - 1 : -1]
    out = []
    for pos, tok in enumerate(row["target_ids"]):
        order = torch.sort(logits[pos], descending=True, stable=True).indices
        out.append(int((order == tok).nonzero()[0]) + 1)
    return out


def test_sigma_zero_gives_exact_rank_k(tiny_lm):
    rows = generate_targets(tiny_lm, [1, 4], per_k=2, length=8, sigma=0.0, seed=3)
    assert [r["k"] for r in rows] == [1, 1, 4, 4]
    for r in rows:
        ranks = ranks_under_model(tiny_lm, r)
        eos = tiny_lm.eos_token_id
        upto = r["target_ids"].index(eos) + 1 if eos in r["target_ids"] else len(ranks)
        assert ranks[:upto] == [r["k"]] * upto
        assert r["mean_rank"] == r["k"]


def test_eos_pads_to_length(tiny_lm, monkeypatch):
    eos = tiny_lm.eos_token_id
    real = tiny_lm.model.forward
    calls = {"n": 0}

    def forward(*a, **k):  # make EoS the most likely token at the third position
        out = real(*a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            out.logits[:, -1, eos] = 1e9
        return out

    monkeypatch.setattr(tiny_lm.model, "forward", forward)
    row = generate_targets(tiny_lm, [1], per_k=1, length=7, sigma=0.0, seed=0)[0]
    assert row["target_ids"][2:] == [eos] * 5 and len(row["target_ids"]) == 7


def test_deterministic_for_a_seed(tiny_lm):
    a = generate_targets(tiny_lm, [2, 5], per_k=2, length=6, sigma=1.0, seed=9)
    b = generate_targets(tiny_lm, [2, 5], per_k=2, length=6, sigma=1.0, seed=9)
    c = generate_targets(tiny_lm, [2, 5], per_k=2, length=6, sigma=1.0, seed=10)
    assert a == b and a != c


def test_targets_cli_writes_jsonl(tmp_path, capsys):
    out = tmp_path / "t.jsonl"
    code = main(["targets", "--model", "tiny-random", "--k", "1,6", "--per-k", "2",
                 "--length", "5", "--out", str(out), "--quiet"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    for key in ("id", "k", "target_ids", "text", "seed", "model", "mean_rank"):
        assert key in rows[0]
    assert all(len(r["target_ids"]) == 5 for r in rows)


def test_targets_cli_rejects_bad_k(capsys):
    assert main(["targets", "--model", "tiny-random", "--k", "0", "--out", "x.jsonl"]) == 2
    assert "--k" in capsys.readouterr().err
