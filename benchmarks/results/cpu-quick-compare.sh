#!/usr/bin/env bash
# The issue-7 comparison: dlmi-search (defaults), gcg (width 32, top-k 64) and dlmi (Table 5)
# on the cpu-quick targets (seed 42, never tuned on), one run, budgets 32/128/256.
# Usage: cpu-quick-compare.sh [N [NAME]] [bench flags...]; N is the prompt length (default 10,
# the preset's), NAME tells a later run apart. Writes the rows, then the report beside them:
# cpu-quick-compare[-nN][-NAME].jsonl and cpu-quick-report[-nN][-NAME]/ (-nN unless N = 10).
# Rerun the same command to resume an interrupted run (finished rows are kept).
set -u
cd "$(dirname "$0")/../.."
n=10 name=""
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then n=$1; shift; fi
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then name=$1; shift; fi
suffix=$([ "$n" = 10 ] || echo "-n$n")${name:+-$name}
out=benchmarks/results/cpu-quick-compare$suffix.jsonl
.venv/bin/dlmi bench --preset cpu-quick --prompt-lengths "$n" --methods dlmi-search,gcg,dlmi \
  --budgets 32,128,256 --set gcg.search_width=32 --set gcg.top_k=64 --quiet --out "$out" "$@"
.venv/bin/dlmi report "$out" --out "benchmarks/results/cpu-quick-report$suffix" --quiet
