"""Warm start against random start: steps of dlmi-search to an exact prompt for the greedy
outputs (8 tokens) of held-out collected prompts, with and without --init-from.
Usage: python benchmarks/l2p/warm_start.py WORK_DIR (holding data/ and ckpt/)."""

import subprocess
import sys
from pathlib import Path

work = Path(sys.argv[1])
py = Path(".venv/bin/python")
script = f"""
import json, dataclasses, dlmi, torch
from dlmi.logit2prompt.data import load_shards
from dlmi.logit2prompt.train import split
from dlmi.logit2prompt.invert import greedy_text_ids, warm_start_prompt
from dlmi.logit2prompt.model import Logit2Prompt
lm = dlmi.load_model()
ids, _ = load_shards("{work}/data")
_, rows = split(len(ids), 0.05)
inv = Logit2Prompt.load("{work}/ckpt")
for r in list(rows)[:4]:
    target = greedy_text_ids(lm, ids[r], 8)
    start, lcs = warm_start_prompt(inv, lm, target)
    runs = {{}}
    for name, init in (("random", None), ("warm", start)):
        res = dlmi.invert(lm, target, prompt_length=10, steps=48, eval_every=4,
                          init_prompt=init[:10] if init else None)
        runs[name] = (res.solved_at_step, round(res.lcs_ratio, 2), round(res.seconds, 1))
    print(json.dumps({{"target": lm.decode(target), "warm_prompt": lm.decode(start),
                      "warm_prompt_lcs": lcs, **runs}}), flush=True)
"""
subprocess.run([str(py), "-c", script], check=True)
