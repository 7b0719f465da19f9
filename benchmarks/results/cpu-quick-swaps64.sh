#!/usr/bin/env bash
# dlmi-search with 64 swaps per step (tuning sweep 3: 3/4 seed-9 k = 1 targets exact within
# 128 steps against 2/4 at 32) on the cpu-quick targets, budgets 32/128, beside the rows of
# cpu-quick-compare.jsonl (same targets, an earlier run on this machine).
set -u
cd "$(dirname "$0")/../.."
.venv/bin/dlmi bench --preset cpu-quick --methods dlmi-search --budgets 32,128 \
  --set dlmi-search.swaps=64 --quiet --out benchmarks/results/cpu-quick-swaps64.jsonl
