#!/usr/bin/env bash
# The issue-7 comparison: dlmi-search (defaults), gcg (width 32, top-k 64) and dlmi (Table 5)
# on the cpu-quick targets (seed 42, never tuned on), one run, budgets 32/128/256.
# Usage: cpu-quick-compare.sh [N] [bench flags...]; N is the prompt length (default 10, the
# preset's). Writes the rows, then the report beside them: cpu-quick-compare.jsonl and
# cpu-quick-report/ at N = 10, cpu-quick-compare-nN.jsonl and cpu-quick-report-nN/ otherwise.
set -u
cd "$(dirname "$0")/../.."
n=${1:-10}; shift || true
suffix=$([ "$n" = 10 ] || echo "-n$n")
out=benchmarks/results/cpu-quick-compare$suffix.jsonl
.venv/bin/dlmi bench --preset cpu-quick --prompt-lengths "$n" --methods dlmi-search,gcg,dlmi \
  --budgets 32,128,256 --set gcg.search_width=32 --set gcg.top_k=64 --quiet --out "$out" "$@"
.venv/bin/dlmi report "$out" --out "benchmarks/results/cpu-quick-report$suffix" --quiet
