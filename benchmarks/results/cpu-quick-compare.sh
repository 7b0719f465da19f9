#!/usr/bin/env bash
# The issue-7 comparison: dlmi-search (defaults), gcg (width 32, top-k 64, as in the earlier
# cpu-quick run) and dlmi (Table 5) on the cpu-quick targets, one run, budgets 32/128/256.
# Writes the rows, then the report beside them.
set -u
cd "$(dirname "$0")/../.."
.venv/bin/dlmi bench --preset cpu-quick --methods dlmi-search,gcg,dlmi --budgets 32,128,256 \
  --set gcg.search_width=32 --set gcg.top_k=64 --quiet \
  --out benchmarks/results/cpu-quick-compare.jsonl
.venv/bin/dlmi report benchmarks/results/cpu-quick-compare.jsonl \
  --out benchmarks/results/cpu-quick-report --quiet
