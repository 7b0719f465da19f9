#!/usr/bin/env bash
# One variant of a dlmi-search tuning sweep: sweep N runs gridN.yaml (our own Algorithm 2
# targets: seed 8 for sweep 2, 9 for sweep 3, 11 for sweep 4, 13 for sweep 5, hard k)
# and writes sweepN-NAME.jsonl.
# Usage: sweep.sh N NAME [bench flags...]; rerun the same command to resume.
set -u
cd "$(dirname "$0")/../.."
sweep=$1 name=$2; shift 2
.venv/bin/dlmi bench --config "benchmarks/tuning/grid$sweep.yaml" --quiet \
  --out "benchmarks/tuning/sweep$sweep-$name.jsonl" "$@" 2>/dev/null
