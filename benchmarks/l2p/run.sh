#!/usr/bin/env bash
# Issue 12 on the default model, sized for 2 CPU cores: 1000 prompts sampled from the model
# (seed 1), an inverter of width 256 trained for 400 steps, held-out metrics with and without
# each defence, and the warm start against a random start. Everything lands in
# benchmarks/results/l2p/ (data and checkpoint stay in $L2P_WORK, default /tmp/dlmi-l2p).
set -u
cd "$(dirname "$0")/../.."
work=${L2P_WORK:-/tmp/dlmi-l2p}
out=benchmarks/results/l2p
mkdir -p "$out" "$work"
t0=$(date +%s)
.venv/bin/dlmi l2p collect --generate 1000 --seed 1 --out "$work/data" --quiet
t1=$(date +%s)
.venv/bin/dlmi l2p train --data "$work/data" --out "$work/ckpt" --steps 400 --eval-every 100 \
  --save-every 100 --quiet | tee "$out/train.txt"
t2=$(date +%s)
echo "collect: $((t1 - t0)) s; train: $((t2 - t1)) s" | tee "$out/times.txt"
.venv/bin/dlmi l2p eval --checkpoint "$work/ckpt" --data "$work/data" --limit 50 \
  --json "$out/eval.json" --quiet | tee "$out/eval.md"
python3 benchmarks/l2p/warm_start.py "$work" | tee "$out/warm_start.txt"
echo "total $(( $(date +%s) - t0 )) s" | tee -a "$out/times.txt"
