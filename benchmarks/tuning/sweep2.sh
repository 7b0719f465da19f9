#!/usr/bin/env bash
# Sweep 2 for dlmi-search: what makes easy (k = 1) targets exact. 64 steps, seed-8 targets.
# Usage: sweep2.sh NAME [bench flags...]; one row file per variant.
set -u
cd "$(dirname "$0")/../.."
name=$1; shift
.venv/bin/dlmi bench --config benchmarks/tuning/grid2.yaml --quiet \
  --out "benchmarks/tuning/sweep2-$name.jsonl" "$@" 2>/dev/null
