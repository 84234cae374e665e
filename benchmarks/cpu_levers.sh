#!/usr/bin/env bash
# Issue 13's CPU speed levers, each against the PyTorch peer in the same process: layers
# scanned (model.unroll_on_cpu=False, the old behaviour) or unrolled (the default on a CPU
# mesh), and XLA:CPU flags on top. Nothing else may run meanwhile; ~20 minutes on the
# 2-core machine. Each run's last line is its JSON; logs in benchmarks/cpu_levers_*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SCAN="--config.model.unroll_on_cpu=False --config.teacher.pretrain.model.unroll_on_cpu=False"
run() {
  name=$1; flags=$2; shift 2; echo "== $name (XLA_FLAGS=$flags)"
  XLA_FLAGS="$flags" "$PY" -m guide_jax.bench --config=experiments/bench_peer.py --peer \
      --steps=5 --arms=baseline,kd "$@" 2>&1 | tee "benchmarks/cpu_levers_$name.log" | tail -4
}
run d256_scan "" $SCAN
run d256_unrolled ""
run d256_unrolled_onednn "--xla_cpu_experimental_onednn_custom_call=true"
run d256_unrolled_xnn "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"
