#!/usr/bin/env bash
# dlmi-search alone on the cpu-quick targets (seed 42, never tuned on), budgets 32/128, beside
# the rows of cpu-quick-compare.jsonl (same targets, an earlier run on this machine).
# Usage: cpu-quick-search.sh NAME [bench flags...] -> cpu-quick-NAME.jsonl; e.g.
#   cpu-quick-search.sh swaps64 --set dlmi-search.swaps=64   (the swaps64 rows)
set -u
cd "$(dirname "$0")/../.."
name=$1; shift
.venv/bin/dlmi bench --preset cpu-quick --methods dlmi-search --budgets 32,128 --quiet \
  --out "benchmarks/results/cpu-quick-$name.jsonl" "$@"
