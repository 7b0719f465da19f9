#!/usr/bin/env bash
# Sweep 1 for dlmi-search on our own targets (seed 7), 48 steps, one row file per variant.
set -u
cd "$(dirname "$0")/../.."
run() {  # name, then bench flags
  name=$1; shift
  .venv/bin/dlmi bench --config benchmarks/tuning/grid.yaml --budgets 16,48 --quiet \
    --out "benchmarks/tuning/sweep1-$name.jsonl" "$@" 2>/dev/null
}
run grad-s1-w40 --methods dlmi-search --set dlmi-search.samples=1 --set dlmi-search.swaps=40
run z-s1-w40 --methods dlmi-search --set dlmi-search.samples=1 --set dlmi-search.swaps=40 \
  --set dlmi-search.proposal=z --set dlmi-search.init_std=0.01
run both-s1-w40 --methods dlmi-search --set dlmi-search.samples=1 --set dlmi-search.swaps=40 \
  --set dlmi-search.proposal=both --set dlmi-search.init_std=0.01
run gcg-w32-k64 --methods gcg --set gcg.search_width=32 --set gcg.top_k=64
run z-s1-w40-lr03 --methods dlmi-search --set dlmi-search.samples=1 --set dlmi-search.swaps=40 \
  --set dlmi-search.proposal=z --set dlmi-search.init_std=0.01 --set dlmi-search.lr=0.3
# After the cpu-quick run showed the first version stalling: the shipped defaults (patience 1,
# forget_rejected, 32 swaps), on the same tuning targets and steps.
run final-defaults --methods dlmi-search
