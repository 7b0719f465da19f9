"""Writes golden.json: every method's prompt, loss and LCS after 6 steps at seed 0 on
tiny-random, through the public API only (dlmi.load_model, dlmi.invert), so the same script
run on an older checkout (PYTHONPATH=that/src) records what that version gave.
Usage: python tests/data/make_golden.py OUT.json"""

import json
import sys

import dlmi

# Explicit options where a default has changed on purpose since the golden file was made.
OPTIONS = {"dlmi-search": {"objective": "ce", "top_k": 256, "checked": 0}}
# Defaults added since: special tokens excluded, prompts judged as re-tokenised text, every
# offered candidate greedily decoded.
COMMON = {"vocab": "all", "roundtrip": False, "judge_all": False}
METHODS = ["dlmi", "dlmi-notf", "dlmi-search", "dlmi-shared-tau", "gbda", "gcg", "pez",
           "random", "reinforce", "soda"]


def golden() -> dict:
    lm = dlmi.load_model("tiny-random", device="cpu")
    target = [40, 41, 42, 43, 44]
    out = {}
    for method in METHODS:
        r = dlmi.invert(lm, target, method=method, prompt_length=4, steps=6, eval_every=3,
                        seed=0, early_stop=False, **COMMON, **OPTIONS.get(method, {}))
        out[method] = {"prompt_ids": r.prompt_ids, "lcs_ratio": r.lcs_ratio,
                       "loss": [round(h["loss"], 5) for h in r.history]}
    return out


if __name__ == "__main__":
    with open(sys.argv[1], "w") as f:
        json.dump(golden(), f, indent=1)
