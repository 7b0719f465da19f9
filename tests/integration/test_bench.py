import json

import pytest
import torch

from dlmi.cli import main
from dlmi.errors import UsageError
from dlmi.evaluation.bench import load_spec, run_bench
from dlmi.evaluation.results_io import read_rows, row_key

GRID = dict(model="tiny-random", methods=["dlmi", "random"], prompt_lengths=[4],
            budgets=[4, 8], seeds=[0, 1], eval_every=4, batch_size=3,
            targets={"k": [1, 3], "per_k": 2, "length": 5, "sigma": 1.0, "seed": 1})
ROW_FIELDS = ("method", "model", "target_id", "k", "seed", "prompt_length", "prompt_ids",
              "prompt_text", "output_ids", "output_text", "lcs_at_budget", "exact_match",
              "overlap_rate", "prompt_perplexity", "target_perplexity", "steps", "seconds",
              "compute", "provenance", "config", "history")


def test_rows_are_complete(tmp_path, tiny_lm):
    out = tmp_path / "r.jsonl"
    spec = load_spec(**GRID)
    assert run_bench(spec, out, lm=tiny_lm) == 2 * 4 * 2
    rows = read_rows(out)
    assert len(rows) == 16 and len({row_key(r) for r in rows}) == 16
    for r in rows:
        for f in ROW_FIELDS:
            assert f in r, f
        assert set(r["lcs_at_budget"]) == {"4", "8"}
        assert r["lcs_at_budget"]["4"] <= r["lcs_at_budget"]["8"]  # anytime best never drops
        assert r["provenance"]["versions"]["torch"]


def test_kill_and_rerun_resumes_without_duplicates(tmp_path, tiny_lm):
    out = tmp_path / "r.jsonl"
    spec = load_spec(**GRID)
    seen = []

    def die_after_five(row):
        seen.append(row)
        if len(seen) == 5:
            raise KeyboardInterrupt  # the process is killed after 5 rows hit the disk

    with pytest.raises(KeyboardInterrupt):
        run_bench(spec, out, lm=tiny_lm, on_row=die_after_five)
    assert len(read_rows(out)) == 5
    assert run_bench(spec, out, lm=tiny_lm) == 11
    rows = read_rows(out)
    assert len(rows) == 16 and len({row_key(r) for r in rows}) == 16
    assert run_bench(spec, out, lm=tiny_lm) == 0


def test_truncated_last_line_is_ignored_and_repaired(tmp_path, tiny_lm, caplog):
    out = tmp_path / "r.jsonl"
    spec = load_spec(**{**GRID, "methods": ["random"]})
    run_bench(spec, out, lm=tiny_lm)
    good = out.read_text().splitlines()
    out.write_text("\n".join(good[:-1]) + "\n" + good[-1][: len(good[-1]) // 2])
    assert len(read_rows(out)) == 7
    assert "truncated" in caplog.text
    assert run_bench(spec, out, lm=tiny_lm) == 1  # only the damaged row is redone
    lines = out.read_text().splitlines()
    assert len(lines) == 8 and all(json.loads(line) for line in lines)


def test_bench_cli_with_config_file_and_method_option(tmp_path):
    cfg = tmp_path / "b.toml"
    cfg.write_text('model = "tiny-random"\nmethods = ["random"]\nprompt_lengths = [3]\n'
                   'budgets = [4]\nseeds = [0]\neval_every = 2\n'
                   '[targets]\nk = [1]\nper_k = 2\nlength = 4\n'
                   '[method_options.random]\nsamples = 2\n')
    out = tmp_path / "r.jsonl"
    code = main(["bench", "--config", str(cfg), "--out", str(out), "--set",
                 "random.samples=3", "--quiet"])
    assert code == 0
    rows = read_rows(out)
    assert len(rows) == 2 and rows[0]["config"]["samples"] == 3


def test_presets_load():
    quick = load_spec("cpu-quick")
    paper = load_spec("paper")
    assert paper.budgets == [256, 2048] and paper.prompt_lengths == [10, 80]
    assert paper.targets.k == [1, 6, 11, 16, 21] and len(paper.seeds) == 5
    assert quick.model == "smollm2-135m" and max(quick.budgets) < max(paper.budgets)


def test_a_prefix_comes_before_every_prompt_and_a_file_keeps_one(tmp_path, tiny_lm):
    out = tmp_path / "r.jsonl"
    spec = load_spec(**{**GRID, "methods": ["random"], "seeds": [0], "prefix": "<s>"})
    assert run_bench(spec, out, lm=tiny_lm) == 4
    rows = read_rows(out)
    assert all(r["prefix_ids"] == [tiny_lm.bos_token_id] for r in rows)  # the special token
    # The judge decodes after the prefix: the row's output is the greedy continuation of it.
    from dlmi.model.dlm import DifferentiableLM

    dlm = DifferentiableLM(tiny_lm, prefix_ids=rows[0]["prefix_ids"])
    out_ids = dlm.greedy_decode(torch.tensor([rows[0]["prompt_ids"]]), 5)[0].tolist()
    assert out_ids == rows[0]["output_ids"]
    with pytest.raises(UsageError, match="holds rows made with prefix ids"):
        run_bench(load_spec(**{**GRID, "methods": ["random"], "seeds": [0]}), out, lm=tiny_lm)


def test_bench_cli_refuses_a_prefix_of_no_tokens(tmp_path, capsys):
    code = main(["bench", "--model", "tiny-random", "--methods", "random", "--budgets", "2",
                 "--prompt-lengths", "2", "--seeds", "0", "--prefix", "",
                 "--out", str(tmp_path / "r.jsonl"), "--quiet"])
    assert code == 2
    assert "encodes to no tokens" in capsys.readouterr().err
