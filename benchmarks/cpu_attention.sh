#!/usr/bin/env bash
# Issue 13's attention levers against the PyTorch peer in the same process: heads-major
# attention products alone (model.query_chunks=1), then with causal query chunks (the
# default on a CPU mesh: 4 at sequence 256), at d 256 and d 512, and bfloat16 at d 256.
# Compare with cpu_levers_*.log (the attention before). Nothing else may run meanwhile;
# ~20 minutes on the 2-core machine. Each run's last line is its JSON; logs in
# benchmarks/cpu_attention_*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ONE_CHUNK="--config.model.query_chunks=1 --config.teacher.pretrain.model.query_chunks=1"
run() {
  name=$1; config=$2; shift 2; echo "== $name"
  "$PY" -m guide_jax.bench --config=experiments/$config --peer --arms=baseline,kd "$@" 2>&1 \
      | tee "benchmarks/cpu_attention_$name.log" | tail -4
}
run d256_heads_major bench_peer.py --steps=5 $ONE_CHUNK
run d256_query_chunks bench_peer.py --steps=5
run d512_query_chunks bench_peer.py:d512 --steps=4
run d256_bf16_query_chunks bench_peer.py --steps=5 \
    --config.model.dtype=bfloat16 --config.teacher.pretrain.model.dtype=bfloat16
