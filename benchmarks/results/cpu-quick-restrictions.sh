#!/usr/bin/env bash
# Issue 11, the price of a usable prompt: dlmi-search (defaults) on the cpu-quick targets at
# 128 steps, unrestricted (vocab all, ids judged as ids: the paper's protocol) against prompts
# restricted to ASCII tokens, to no target tokens, and judged as re-tokenised text.
# One rows file per variant; summarise with benchmarks/tuning/summarise.py.
set -u
cd "$(dirname "$0")/../.."
run() {
  name=$1; shift
  .venv/bin/dlmi bench --preset cpu-quick --methods dlmi-search --budgets 32,128 --quiet \
    --out "benchmarks/results/restrict-$name.jsonl" "$@"
}
run all --set dlmi-search.vocab=all
run ascii --set dlmi-search.vocab=ascii
run no-target --set dlmi-search.no_target_tokens=true
run roundtrip --set dlmi-search.roundtrip=true
