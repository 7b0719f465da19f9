#!/usr/bin/env bash
# Sweep 3 for dlmi-search: exact k = 1 targets within 128 steps (seed-9 targets, grid3.yaml).
# Usage: sweep3.sh NAME [bench flags...]; one row file per variant.
set -u
cd "$(dirname "$0")/../.."
name=$1; shift
.venv/bin/dlmi bench --config benchmarks/tuning/grid3.yaml --quiet \
  --out "benchmarks/tuning/sweep3-$name.jsonl" "$@" 2>/dev/null
