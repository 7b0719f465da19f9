import json
import subprocess
import sys

from dlmi.cli import main


def fixture_rows():
    rows = []
    for method in ("dlmi", "gbda"):
        for k in (1, 6):
            for seed in (0, 1):
                best = 1.0 if method == "dlmi" else 0.5
                rows.append({
                    "method": method, "model": "m", "target_id": f"k{k}", "k": k,
                    "seed": seed, "prompt_length": 10, "prompt_ids": [1, 2],
                    "prompt_text": "a b|c", "output_ids": [3], "output_text": "out\n",
                    "target_ids": [3], "target_text": "out\n", "lcs_ratio": best,
                    "exact_match": best == 1.0, "lcs_at_budget": {"4": best / 2, "8": best},
                    "overlap_rate": 0.1, "prompt_perplexity": 50.0, "steps": 8,
                    "seconds": 2.0, "compute": {"flops": 8e9},
                    # gbda rows come from an older file without the soft metric
                    **({"soft_lcs": 0.9, "soft_lcs_at_budget": {"4": 0.7, "8": 0.9}}
                       if method == "dlmi" else {}),
                    "history": [{"step": s, "loss": 1.0 / s, "temperature": 100.0 / s,
                                 "lcs": best, "best_lcs": best * s / 8, "seconds": s / 4}
                                for s in (4, 8)],
                })
    return rows


def test_every_output_is_produced(tmp_path, capsys):
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in fixture_rows()))
    out = tmp_path / "report"
    assert main(["report", str(res), "--out", str(out)]) == 0
    for name in ("lcs_vs_k", "temperature", "lcs_vs_compute"):
        for ext in ("png", "svg"):
            f = out / f"{name}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000, f
    summary = (out / "summary.md").read_text()
    # hard LCS and exact rate, then the soft LCS, at budgets 4 and 8; gbda has no soft column
    assert ("| dlmi | 10 | 1 | 2 | 0.50 ± 0.00 | 0% | 0.70 ± 0.00 | 1.00 ± 0.00 | 100% "
            "| 0.90 ± 0.00 |") in summary
    assert "| gbda | 10 | 1 | 2 | 0.25 ± 0.00 | 0% |  | 0.50 ± 0.00 | 0% |  |" in summary
    table = (out / "table_dlmi.md").read_text()
    assert "a·b\\|c" in table and "out↵" in table  # whitespace visible, pipes escaped
    assert "| 1.00 | 0.9 |" in table  # hard LCS, soft LCS
    assert (out / "table_gbda.md").is_file()


def test_report_does_not_import_torch(tmp_path):
    res = tmp_path / "r.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in fixture_rows()))
    code = ("import sys; from dlmi.cli import main; "
            f"main(['report', {str(res)!r}, '--out', {str(tmp_path / 'o')!r}]); "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_missing_results_file(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_anytime_table_compares_methods_at_equal_time_and_flops():
    from dlmi.evaluation.report import anytime_table

    rows = fixture_rows()
    for r in rows:  # gbda runs twice as long and spends twice the FLOPs per step
        if r["method"] == "gbda":
            r["compute"] = {"flops": 16e9}
            r["history"] = [dict(h, seconds=h["seconds"] * 2) for h in r["history"]]
    text = anytime_table(rows)
    # Largest cost: gbda's 4 s and 16 GFLOP; levels at 10/25/50/100 %. dlmi reached best 0.5
    # at 1 s / 4 GFLOP and 1.0 at 2 s / 8 GFLOP, then had ended (†).
    assert "| dlmi | 10 | 0.00 | 0.50 | 1.00 | 1.00† |" in text
    assert "| gbda | 10 | 0.00 | 0.00 | 0.25 | 0.50 |" in text
    assert "LCS @ 4 s" in text and "LCS @ 0.016 TFLOP" in text
