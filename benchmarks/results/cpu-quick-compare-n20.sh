#!/usr/bin/env bash
# The issue-7 comparison at N = 20, the prompt length `dlmi invert` uses by default:
# dlmi-search (defaults, 32 swaps), gcg (width 32, top-k 64) and dlmi (Table 5) on the
# cpu-quick targets (seed 42, never tuned on), one run, budgets 32/128/256.
# Writes the rows, then the report beside them.
set -u
cd "$(dirname "$0")/../.."
.venv/bin/dlmi bench --preset cpu-quick --prompt-lengths 20 --methods dlmi-search,gcg,dlmi \
  --budgets 32,128,256 --set gcg.search_width=32 --set gcg.top_k=64 --quiet \
  --out benchmarks/results/cpu-quick-compare-n20.jsonl
.venv/bin/dlmi report benchmarks/results/cpu-quick-compare-n20.jsonl \
  --out benchmarks/results/cpu-quick-report-n20 --quiet
