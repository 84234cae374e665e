#!/usr/bin/env bash
# The CPU step against the PyTorch peer before and after the attention kernels landed
# (models/attention.py; on a CPU `auto` runs the xla kernel, the same formulation as before).
# BEFORE=path to a checkout of the commit before (git worktree add /tmp/before 4b91fc0).
# Two bench --peer runs back to back, alone on the machine; logs cpu_kernels_*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$PWD/.venv/bin/python
BEFORE=${BEFORE:-/tmp/before}
grep -m1 "model name" /proc/cpuinfo
for side in before after; do
  dir=$PWD; [ $side = before ] && dir=$BEFORE
  echo "== $side ($dir)"
  (cd "$dir" && "$PY" -m guide_jax.bench --config=experiments/bench_peer.py --peer \
       --arms=baseline,kd --steps=5 2>&1) | tee "benchmarks/cpu_kernels_$side.log" | grep "peer\|^{" | cut -c1-200
done
