#!/usr/bin/env bash
# Issue 13's measurement: the cpu-quick targets (dlmi, N = 10) serial against --ray with 2
# workers of 1 CPU on this machine. batch_size 3 makes two cells (3 + 2 targets), so two
# workers have something to share; budget 32 keeps the pair of runs to minutes. Rows land in
# benchmarks/results/ray/ (each run's file is removed first so both run whole).
set -eu
cd "$(dirname "$0")/../.."
out=benchmarks/results/ray
mkdir -p "$out"
rm -f "$out/serial.jsonl" "$out/ray.jsonl"
args=(--preset cpu-quick --budgets 32 --batch-size 3 --quiet)
t0=$(date +%s.%N)
.venv/bin/dlmi bench "${args[@]}" --out "$out/serial.jsonl"
t1=$(date +%s.%N)
.venv/bin/dlmi bench "${args[@]}" --out "$out/ray.jsonl" --ray
t2=$(date +%s.%N)
python3 - "$out" "$t0" "$t1" "$t2" <<'PY' | tee "$out/times.md"
import json, sys
out, t0, t1, t2 = sys.argv[1], *map(float, sys.argv[2:])
def rows(name):
    return [json.loads(line) for line in open(f"{out}/{name}.jsonl")]
s, r = rows("serial"), rows("ray")
key = lambda row: row["target_id"]
same = all(a["prompt_ids"] == b["prompt_ids"] for a, b in zip(sorted(s, key=key), sorted(r, key=key)))
print(f"| run | wall s (model load and start-up included) | rows | mean hard LCS @32 |")
print(f"| --- | --- | --- | --- |")
for name, rs, t in (("serial", s, t1 - t0), ("ray, 2 workers x 1 CPU", r, t2 - t1)):
    lcs = sum(x["lcs_at_budget"]["32"] for x in rs) / len(rs)
    print(f"| {name} | {t:.0f} | {len(rs)} | {lcs:.2f} |")
print(f"\nserial / ray wall time: {(t1 - t0) / (t2 - t1):.2f}; same prompts in both: {same}")
PY
