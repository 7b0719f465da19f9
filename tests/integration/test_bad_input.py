"""Bad input, every command: one line on stderr that says what to change, exit 2, no
traceback, nothing already written lost. One row per case."""

import pytest

from dlmi.cli import main

TINY = ["--model", "tiny-random", "--device", "cpu"]


def _files(tmp):
    """The input files the cases refer to, by name."""
    (tmp / "dir").mkdir()
    (tmp / "empty.txt").write_text("\n\n")
    (tmp / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp / "ids.jsonl").write_text('{"target_ids": [1, "two"]}\n')
    (tmp / "notext.jsonl").write_text('{"id": "a"}\n')
    (tmp / "targets.txt").write_text("hello world\n")
    (tmp / "a_file").write_text("x")
    configs = {
        "seeds_scalar.yaml": "seeds: 3\n",
        "methods_empty.yaml": "methods: []\n",
        "unknown_key.yaml": "colour: blue\n",
        "bad_yaml.yaml": "methods: [dlmi\n",
        "budget_zero.yaml": "budgets: [0]\n",
        "batch_zero.yaml": "batch_size: 0\n",
        "batch_text.yaml": "batch_size: two\n",
        "time_negative.yaml": "time_limit: -1\n",
        "time_nan.yaml": "time_limit: .nan\n",
        "k_text.yaml": "targets: {k: x}\n",
        "k_zero.yaml": "targets: {k: [0]}\n",
        "targets_unknown.yaml": "targets: {size: 3}\n",
        "prompt_zero.yaml": "prompt_lengths: [0]\n",
        "options_scalar.yaml": "methods: [gcg]\nmethod_options: {gcg: 3}\n",
        "option_unknown.yaml": "methods: [gcg]\nmethod_options: {gcg: {width: 3}}\n",
        "option_type.yaml": "methods: [gcg]\nmethod_options: {gcg: {top_k: many}}\n",
        "eval_zero.yaml": "eval_every: 0\n",
        "list_top.yaml": "- methods\n",
        "bad_toml.toml": "methods = [\n",
        "model_number.yaml": "model: 3\n",
        "seeds_text.yaml": "seeds: [a]\n",
        "missing_targets.yaml": "targets_file: nowhere.jsonl\n",
        "ray_cpus_zero.yaml": "executor: {ray: {cpus_per_task: 0}}\n",
        "ray_unknown.yaml": "executor: {ray: {gpus: 1}}\n",
        "executor_unknown.yaml": "executor: {kubernetes: {}}\n",
    }
    for name, text in configs.items():
        (tmp / name).write_text(text)
    (tmp / "pairs.jsonl").write_text('{"input": "a", "output": " b"}\n')
    (tmp / "noout.jsonl").write_text('{"input": "a"}\n')
    (tmp / "notjson.jsonl").write_text('{"input": "a", "output": " b"}\ninput a\n')
    (tmp / "latin1.yaml").write_bytes("model: caf\xe9\n".encode("latin-1"))


# (case id, argv with {tmp} for the test's folder, a fragment the message must contain)
CASES = [
    # invert
    ("invert-empty-target", ["invert", "--target", ""], "target is empty"),
    ("invert-steps-zero", ["invert", "--target", "a", "--steps", "0"], "--steps"),
    ("invert-steps-negative", ["invert", "--target", "a", "--steps", "-5"], "--steps"),
    ("invert-steps-text", ["invert", "--target", "a", "--steps", "many"], "--steps"),
    ("invert-lr-nan", ["invert", "--target", "a", "--lr", "nan"], "--lr"),
    ("invert-lr-inf", ["invert", "--target", "a", "--lr", "inf"], "--lr"),
    ("invert-tau-negative", ["invert", "--target", "a", "--tau0", "-1"], "--tau0"),
    ("invert-prompt-zero", ["invert", "--target", "a", "--prompt-length", "0"],
     "--prompt-length"),
    ("invert-eval-zero", ["invert", "--target", "a", "--eval-every", "0"], "--eval-every"),
    ("invert-time-zero", ["invert", "--target", "a", "--time-limit", "0"], "--time-limit"),
    ("invert-time-nan", ["invert", "--target", "a", "--time-limit", "nan"], "--time-limit"),
    ("invert-set-unknown", ["invert", "--target", "a", "--set", "nope=1"], "unknown option"),
    ("invert-set-no-equals", ["invert", "--target", "a", "--set", "swaps"], "KEY=VALUE"),
    ("invert-set-int-text", ["invert", "--target", "a", "--set", "swaps=abc"], "integer"),
    ("invert-set-int-float", ["invert", "--target", "a", "--set", "swaps=2.5"], "integer"),
    ("invert-set-bool", ["invert", "--target", "a", "--set", "anchor=maybe"], "true or false"),
    ("invert-set-choice", ["invert", "--target", "a", "--set", "objective=hinge"], "ce, cw"),
    ("invert-set-negative", ["invert", "--target", "a", "--set", "swaps=-1"], "swaps"),
    ("invert-set-str-number", ["invert", "--target", "a", "--set", "proposal=3"], "string"),
    ("invert-budget-past-steps", ["invert", "--target", "a", "--steps", "4", "--set",
                                  "budgets=[8]"], "budget 8"),
    ("invert-method", ["invert", "--target", "a", "--method", "nope"], "invalid choice"),
    ("invert-no-target", ["invert"], "required"),
    ("invert-both-targets", ["invert", "--target", "a", "--targets", "{tmp}/targets.txt"],
     "not allowed"),
    ("invert-targets-missing", ["invert", "--targets", "{tmp}/nowhere.txt"], "not found"),
    ("invert-targets-dir", ["invert", "--targets", "{tmp}/dir"], "is a directory"),
    ("invert-targets-empty", ["invert", "--targets", "{tmp}/empty.txt"], "no targets"),
    ("invert-targets-latin1", ["invert", "--targets", "{tmp}/latin1.txt"], "UTF-8"),
    ("invert-targets-bad-ids", ["invert", "--targets", "{tmp}/ids.jsonl"], "target_ids"),
    ("invert-targets-no-text", ["invert", "--targets", "{tmp}/notext.jsonl"], "'text'"),
    ("invert-json-dir", ["invert", "--target", "a", "--json", "{tmp}/dir"], "is a directory"),
    ("invert-json-under-file", ["invert", "--target", "a", "--json", "{tmp}/a_file/out.jsonl"],
     "cannot write"),
    ("invert-device", ["invert", "--target", "a", "--model", "tiny-random", "--device", "gpu"],
     "device"),
    ("invert-dtype", ["invert", "--target", "a", "--dtype", "float8"], "invalid choice"),
    ("invert-model-path", ["invert", "--target", "a", "--model", "/no/such/model"],
     "not found"),
    ("invert-model-gguf", ["invert", "--target", "a", "--model", "{tmp}/no.gguf"], "not found"),
    # bench
    ("bench-preset", ["bench", "--preset", "fast", "--out", "{tmp}/r.jsonl"], "invalid choice"),
    ("bench-config-missing", ["bench", "--config", "{tmp}/no.yaml", "--out", "{tmp}/r.jsonl"],
     "not found"),
    ("bench-config-dir", ["bench", "--config", "{tmp}/dir", "--out", "{tmp}/r.jsonl"],
     "is a directory"),
    ("bench-config-latin1", ["bench", "--config", "{tmp}/latin1.yaml", "--out",
                             "{tmp}/r.jsonl"], "UTF-8"),
    ("bench-seeds-scalar", ["bench", "--config", "{tmp}/seeds_scalar.yaml", "--out",
                            "{tmp}/r.jsonl"], "seeds expects a list"),
    ("bench-seeds-text", ["bench", "--config", "{tmp}/seeds_text.yaml", "--out",
                          "{tmp}/r.jsonl"], "integer"),
    ("bench-methods-empty", ["bench", "--config", "{tmp}/methods_empty.yaml", "--out",
                             "{tmp}/r.jsonl"], "at least one value in methods"),
    ("bench-unknown-key", ["bench", "--config", "{tmp}/unknown_key.yaml", "--out",
                           "{tmp}/r.jsonl"], "colour"),
    ("bench-bad-yaml", ["bench", "--config", "{tmp}/bad_yaml.yaml", "--out", "{tmp}/r.jsonl"],
     "cannot parse"),
    ("bench-bad-toml", ["bench", "--config", "{tmp}/bad_toml.toml", "--out", "{tmp}/r.jsonl"],
     "cannot parse"),
    ("bench-top-level-list", ["bench", "--config", "{tmp}/list_top.yaml", "--out",
                              "{tmp}/r.jsonl"], "mapping"),
    ("bench-budget-zero", ["bench", "--config", "{tmp}/budget_zero.yaml", "--out",
                           "{tmp}/r.jsonl"], "budgets"),
    ("bench-batch-zero", ["bench", "--config", "{tmp}/batch_zero.yaml", "--out",
                          "{tmp}/r.jsonl"], "batch_size"),
    ("bench-batch-text", ["bench", "--config", "{tmp}/batch_text.yaml", "--out",
                          "{tmp}/r.jsonl"], "integer"),
    ("bench-time-negative", ["bench", "--config", "{tmp}/time_negative.yaml", "--out",
                             "{tmp}/r.jsonl"], "time_limit"),
    ("bench-time-nan", ["bench", "--config", "{tmp}/time_nan.yaml", "--out", "{tmp}/r.jsonl"],
     "finite"),
    ("bench-k-text", ["bench", "--config", "{tmp}/k_text.yaml", "--out", "{tmp}/r.jsonl"],
     "list"),
    ("bench-k-zero", ["bench", "--config", "{tmp}/k_zero.yaml", "--out", "{tmp}/r.jsonl"],
     "ranks >= 1"),
    ("bench-targets-unknown", ["bench", "--config", "{tmp}/targets_unknown.yaml", "--out",
                               "{tmp}/r.jsonl"], "size"),
    ("bench-prompt-zero", ["bench", "--config", "{tmp}/prompt_zero.yaml", "--out",
                           "{tmp}/r.jsonl"], "prompt_lengths"),
    ("bench-options-scalar", ["bench", "--config", "{tmp}/options_scalar.yaml", "--out",
                              "{tmp}/r.jsonl"], "mapping"),
    ("bench-option-unknown", ["bench", "--config", "{tmp}/option_unknown.yaml", "--out",
                              "{tmp}/r.jsonl"], "width"),
    ("bench-option-type", ["bench", "--config", "{tmp}/option_type.yaml", "--out",
                           "{tmp}/r.jsonl"], "top_k"),
    ("bench-eval-zero", ["bench", "--config", "{tmp}/eval_zero.yaml", "--out",
                         "{tmp}/r.jsonl"], "eval_every"),
    ("bench-model-number", ["bench", "--config", "{tmp}/model_number.yaml", "--out",
                            "{tmp}/r.jsonl"], "string"),
    ("bench-targets-file-missing", ["bench", "--config", "{tmp}/missing_targets.yaml", "--out",
                                    "{tmp}/r.jsonl"], "not found"),
    ("bench-ray-cpus-zero", ["bench", "--config", "{tmp}/ray_cpus_zero.yaml", "--out",
                             "{tmp}/r.jsonl"], "cpus_per_task > 0"),
    ("bench-ray-unknown", ["bench", "--config", "{tmp}/ray_unknown.yaml", "--out",
                           "{tmp}/r.jsonl"], "unknown option 'gpus'"),
    ("bench-executor-unknown", ["bench", "--config", "{tmp}/executor_unknown.yaml", "--out",
                                "{tmp}/r.jsonl"], "unknown option 'kubernetes'"),
    ("bench-methods-unknown", ["bench", "--methods", "nope", "--out", "{tmp}/r.jsonl"],
     "unknown method"),
    ("bench-seeds-flag", ["bench", "--seeds", "a,b", "--out", "{tmp}/r.jsonl"], "--seeds"),
    ("bench-lengths-empty", ["bench", "--prompt-lengths", ",", "--out", "{tmp}/r.jsonl"],
     "--prompt-lengths is empty"),
    ("bench-set-format", ["bench", "--set", "top_k=3", "--out", "{tmp}/r.jsonl"],
     "METHOD.KEY=VALUE"),
    ("bench-set-type", ["bench", "--methods", "gcg", "--set", "gcg.top_k=abc", "--out",
                        "{tmp}/r.jsonl"], "integer, got 'abc': change --set gcg.top_k=VALUE"),
    ("bench-out-dir", ["bench", "--preset", "cpu-quick", "--out", "{tmp}/dir"],
     "is a directory"),
    ("bench-out-under-file", ["bench", "--preset", "cpu-quick", "--out",
                              "{tmp}/a_file/r.jsonl"], "cannot write"),
    ("bench-time-flag", ["bench", "--time-limit", "-3", "--out", "{tmp}/r.jsonl"],
     "time_limit"),
    ("invert-save-file", ["invert", "--target", "a", "--save", "{tmp}/a_file"], "is a file"),
    ("invert-save-many", ["invert", "--targets", "{tmp}/targets.txt", "--save", "{tmp}/sp"],
     "one --target"),
    ("invert-init-from", ["invert", "--target", "a", "--soft", "--set",
                          "init_from={tmp}/dir"], "not a soft prompt folder"),
    ("invert-vocab", ["invert", "--target", "a", "--vocab", "latin"], "vocab must be one of"),
    ("invert-allow-text", ["invert", "--target", "a", "--set", "vocab_allow=a,b"],
     "comma-separated token ids"),
    # tune
    ("tune-data-missing", ["tune", "--data", "{tmp}/nowhere.jsonl"], "not found"),
    ("tune-data-empty", ["tune", "--data", "{tmp}/empty.txt"], "has no pairs"),
    ("tune-data-no-output", ["tune", "--data", "{tmp}/noout.jsonl"], "'output'"),
    ("tune-data-not-json", ["tune", "--data", "{tmp}/notjson.jsonl"], "notjson.jsonl:2"),
    ("tune-no-prompt", ["tune", "--data", "{tmp}/pairs.jsonl", "--template", "{input}"],
     "exactly one {prompt}"),
    ("tune-two-prompts", ["tune", "--data", "{tmp}/pairs.jsonl", "--template",
                          "{prompt}{prompt}{input}"], "exactly one {prompt}"),
    ("tune-no-input", ["tune", "--data", "{tmp}/pairs.jsonl", "--template", "{prompt}:"],
     "no {input}"),
    ("tune-chat-json", ["tune", "--data", "{tmp}/pairs.jsonl", "--template", "[{"],
     "not valid JSON"),
    ("tune-no-chat-template", ["tune", "--data", "{tmp}/pairs.jsonl", "--chat"],
     "no chat template"),
    ("tune-template-file", ["tune", "--data", "{tmp}/pairs.jsonl", "--template",
                            "@{tmp}/nowhere.txt"], "cannot read template"),
    ("tune-eval-missing", ["tune", "--data", "{tmp}/pairs.jsonl", "--eval",
                           "{tmp}/nowhere.jsonl"], "not found"),
    ("tune-json-dir", ["tune", "--data", "{tmp}/pairs.jsonl", "--json", "{tmp}/dir"],
     "is a directory"),
    ("tune-save-file", ["tune", "--data", "{tmp}/pairs.jsonl", "--save", "{tmp}/a_file"],
     "is a file"),
    ("tune-steps-zero", ["tune", "--data", "{tmp}/pairs.jsonl", "--steps", "0"], "--steps"),
    # l2p
    ("l2p-generate-zero", ["l2p", "collect", "--generate", "0", "--out", "{tmp}/d"],
     "--generate"),
    ("l2p-prompts-missing", ["l2p", "collect", "--prompts", "{tmp}/nowhere.txt", "--out",
                             "{tmp}/d"], "not found"),
    ("l2p-out-file", ["l2p", "collect", "--prompts", "{tmp}/targets.txt", "--out",
                      "{tmp}/a_file"], "is a file"),
    ("l2p-train-no-data", ["l2p", "train", "--data", "{tmp}/dir", "--out", "{tmp}/ck"],
     "not a logit2prompt data folder"),
    ("l2p-train-steps", ["l2p", "train", "--data", "{tmp}/dir", "--out", "{tmp}/ck",
                         "--steps", "0"], "--steps"),
    ("l2p-invert-no-ckpt", ["l2p", "invert", "--checkpoint", "{tmp}/dir", "--prompt", "a"],
     "not a logit2prompt checkpoint"),
    ("l2p-eval-no-ckpt", ["l2p", "eval", "--checkpoint", "{tmp}/dir", "--data", "{tmp}/dir"],
     "not a logit2prompt checkpoint"),
    # targets
    ("targets-k-zero", ["targets", "--k", "0", "--out", "{tmp}/t.jsonl"], "--k"),
    ("targets-k-text", ["targets", "--k", "a", "--out", "{tmp}/t.jsonl"], "--k"),
    ("targets-per-k", ["targets", "--per-k", "0", "--out", "{tmp}/t.jsonl"], "--per-k"),
    ("targets-length", ["targets", "--length", "0", "--out", "{tmp}/t.jsonl"], "--length"),
    ("targets-sigma-nan", ["targets", "--sigma", "nan", "--out", "{tmp}/t.jsonl"], "--sigma"),
    ("targets-out-dir", ["targets", "--out", "{tmp}/dir"], "is a directory"),
    # report
    ("report-missing", ["report", "{tmp}/nowhere.jsonl", "--out", "{tmp}/rep"], "not found"),
    ("report-dir-input", ["report", "{tmp}/dir", "--out", "{tmp}/rep"], "is a directory"),
    ("report-out-file", ["report", "{tmp}/targets.txt", "--out", "{tmp}/a_file"], "is a file"),
    # diagnose
    ("diagnose-estimator", ["diagnose", "--target", "a", "--estimators", "magic", "--out",
                            "{tmp}/d"], "magic"),
    ("diagnose-steps", ["diagnose", "--target", "a", "--steps", "0", "--out", "{tmp}/d"],
     "--steps"),
    ("diagnose-out-file", ["diagnose", "--target", "a", "--out", "{tmp}/a_file"], "is a file"),
    # methods, top level
    ("methods-unknown", ["methods", "nope"], "unknown method"),
    ("no-such-command", ["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("case,argv,fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case, argv, fragment, tmp_path, capsys):
    _files(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] in ("invert", "tune", "targets", "diagnose", "l2p") and "--model" not in argv:
        argv += TINY
    code = main(argv + ["--quiet"] if argv[0] not in ("methods", "frobnicate") else argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, (case, err)
    assert len(err) == 1 and err[0].startswith("dlmi: error:"), (case, err)
    assert fragment in err[0], (case, err[0])
    assert "Traceback" not in err[0]


def test_the_table_has_at_least_40_cases_over_every_command():
    commands = {argv[0] for _, argv, _ in CASES}
    assert len(CASES) >= 40
    assert {"invert", "tune", "bench", "targets", "report", "diagnose", "methods"} <= commands


def test_a_bad_config_leaves_existing_rows_untouched(tmp_path, capsys):
    _files(tmp_path)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"method": "dlmi", "model": "m", "target_id": "a", "seed": 0, '
                    '"prompt_length": 10}\n')
    before = rows.read_bytes()
    code = main(["bench", "--config", str(tmp_path / "seeds_scalar.yaml"), "--out", str(rows)])
    assert code == 2 and rows.read_bytes() == before



def test_a_closed_output_pipe_ends_quietly(monkeypatch, capsys):
    # `dlmi ... | head`: head closes the pipe, the next print raises BrokenPipeError.
    import dlmi.cli.methods as methods

    def closed(args):
        raise BrokenPipeError

    monkeypatch.setattr(methods, "run", closed)
    assert main(["methods"]) == 0
    assert capsys.readouterr().err == ""
