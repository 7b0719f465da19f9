import json

import pytest

from dlmi.cli import main
from dlmi.evaluation.results_io import read_rows
from tests.conftest import hidden_prompt_target

TINY = ["--model", "tiny-random", "--prompt-length", "4", "--eval-every", "4", "--quiet"]


def test_invert_prints_and_writes_json(tmp_path, capsys, tiny_lm):
    target = tiny_lm.decode(hidden_prompt_target(tiny_lm, 0))
    out = tmp_path / "r.jsonl"
    code = main(["invert", "--target", target, "--steps", "60", "--json", str(out), *TINY])
    assert code == 0
    printed = capsys.readouterr().out
    assert "prompt" in printed and "LCS" in printed
    rows = read_rows(out)
    assert len(rows) == 1
    for key in ("prompt_ids", "prompt_text", "output_ids", "output_text", "target_ids",
                "lcs_ratio", "exact_match", "roundtrip_ok", "steps", "seconds", "history",
                "provenance", "compute", "method", "model", "target_id", "k", "seed",
                "prompt_length", "overlap_rate", "prompt_perplexity", "target_perplexity"):
        assert key in rows[0]
    assert rows[0]["exact_match"] is True
    # The bench's row schema: `dlmi report` reads invert rows without a bench.
    assert main(["report", str(out), "--out", str(tmp_path / "rep"), "--quiet"]) == 0
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "| dlmi-search | 4 |" in summary and "100%" in summary


def test_target_file_plain_and_jsonl(tmp_path, capsys):
    plain = tmp_path / "t.txt"
    plain.write_text("ab\n\ncd\n")
    assert main(["invert", "--target-file", str(plain), "--steps", "2", *TINY]) == 0
    assert capsys.readouterr().out.count("target   ") == 2
    jsonl = tmp_path / "t.jsonl"
    # target_ids take precedence over text
    jsonl.write_text(json.dumps({"text": "zz", "target_ids": [40, 41]}) + "\n")
    out = tmp_path / "r.jsonl"
    assert main(["invert", "--targets", str(jsonl), "--steps", "2", "--json", str(out),
                 *TINY]) == 0
    assert read_rows(out)[0]["target_ids"] == [40, 41]


@pytest.mark.parametrize("argv,text", [
    (["--target", ""], "empty"),
    (["--target", "a" * 300], "context"),
    (["--target", "a", "--prompt-length", "0"], "prompt-length"),
    (["--target", "a", "--steps", "0"], "steps"),
    (["--target-file", "/no/such/file"], "not found"),
    (["--target", "a", "--model", "/no/such/model"], "not found"),
    (["--target", "a", "--model", "missing.gguf"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(argv, text, capsys):
    model = [] if "--model" in argv else ["--model", "tiny-random"]
    code = main(["invert", *argv, *model, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("dlmi: error:") and text in err[0]
    assert "Traceback" not in err[0]


def test_methods_lists_names_with_descriptions(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [ln.split()[0] for ln in lines]
    assert "dlmi" in names and "random" in names
    assert all(len(ln.split()) > 2 for ln in lines)


def test_interrupt_prints_and_writes_best(tmp_path, capsys, monkeypatch):
    import dlmi.inversion.runner as runner

    real_run = runner._Run.run

    def interrupting_run(self):  # Ctrl-C arrives during step 6
        original = self.method.step

        def step(state, batch, n):
            if n == 6:
                raise KeyboardInterrupt
            return original(state, batch, n)

        self.method.step = step
        return real_run(self)

    monkeypatch.setattr(runner._Run, "run", interrupting_run)
    out = tmp_path / "r.jsonl"
    code = main(["invert", "--target", "abc", "--steps", "50", "--json", str(out), *TINY])
    assert code == 130
    rows = read_rows(out)
    assert rows[0]["interrupted"] is True and rows[0]["steps"] == 5
    assert "prompt" in capsys.readouterr().out
    # A report leaves the unfinished row out instead of counting it.
    assert main(["report", str(out), "--out", str(tmp_path / "rep"), "--quiet"]) == 2


def test_every_option_of_every_method_has_help(capsys):
    from dlmi.inversion.option_docs import options_of
    from dlmi.methods.registry import get_method, method_names

    for name in method_names():
        for option in options_of(get_method(name).config_class):
            assert option["help"], (name, option["name"])


def test_methods_name_prints_options_with_defaults_and_sources(capsys):
    assert main(["methods", "dlmi-search"]) == 0
    out = capsys.readouterr().out
    assert "top_k" in out and "[measured]" in out and "[Table 5]" in out
    assert main(["methods", "dlmi-search", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    opts = {o["name"]: o for o in doc["options"]}
    from dlmi.methods.dlmi_search import DLMISearchConfig

    assert opts["top_k"]["default"] == DLMISearchConfig().top_k
    assert opts["time_limit"]["type"] == "float?" and opts["budgets"]["type"] == "list[int]"
    assert main(["methods", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in listing if m["default"]] == ["dlmi-search"]


def test_env_and_version(capsys):
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["torch_threads"] >= 1 and info["versions"]["torch"]
    assert info["device"] in ("cpu", "cuda")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("dlmi ")


def test_config_file_values_are_checked_like_flags(tmp_path):
    from dlmi.errors import UsageError
    from dlmi.evaluation.bench import load_spec

    cfg = tmp_path / "grid.yaml"
    cfg.write_text("seeds: ['1', 2]\nmethod_options: {gcg: {top_k: '16'}}\nmethods: [gcg]\n")
    spec = load_spec(None, str(cfg))
    assert spec.seeds == [1, 2]  # text that is a number is read as one
    from dlmi.evaluation.cells import method_config

    assert method_config(spec, "gcg", 10).top_k == 16
    cfg.write_text("seeds: [1.5]\n")
    with pytest.raises(UsageError, match="integer"):
        load_spec(None, str(cfg))


def test_every_flag_of_every_command_has_help():
    import argparse

    from dlmi.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {a.option_strings or a.dest}" for name, p in sub.choices.items()
               for a in p._actions if not a.help and not isinstance(a, argparse._HelpAction)]
    assert not missing, missing
