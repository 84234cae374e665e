#!/usr/bin/env bash
# Issue 13's CPU speed levers, each against the PyTorch peer in the same process: layers
# scanned (model.unroll_on_cpu=False, the old behaviour) or unrolled (the default on a CPU
# mesh), XLA:CPU flags off, oneDNN (the commands' default, guide_jax/cli.py) or XNNPACK
# graph fusion on top; then d 512 and bfloat16 with the defaults. Nothing else may run
# meanwhile; ~35 minutes on the 2-core machine. Each run's last line is its JSON; logs in
# benchmarks/cpu_levers_*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SCAN="--config.model.unroll_on_cpu=False --config.teacher.pretrain.model.unroll_on_cpu=False"
NO_ONEDNN=--xla_cpu_experimental_onednn_custom_call=false
XNN=--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY
run() {
  name=$1; flags=$2; config=$3; shift 3; echo "== $name (XLA_FLAGS=$flags)"
  XLA_FLAGS="$flags" "$PY" -m guide_jax.bench --config=experiments/$config --peer \
      --arms=baseline,kd "$@" 2>&1 | tee "benchmarks/cpu_levers_$name.log" | tail -4
}
run d256_scan "$NO_ONEDNN" bench_peer.py --steps=5 $SCAN
run d256_unrolled "$NO_ONEDNN" bench_peer.py --steps=5
run d256_unrolled_onednn "" bench_peer.py --steps=5
run d256_unrolled_xnn "$NO_ONEDNN $XNN" bench_peer.py --steps=5
run d256_unrolled_onednn_xnn "$XNN" bench_peer.py --steps=5
run d512_unrolled_onednn "" bench_peer.py:d512 --steps=4
run d256_bf16_unrolled_onednn "" bench_peer.py --steps=5 \
    --config.model.dtype=bfloat16 --config.teacher.pretrain.model.dtype=bfloat16
