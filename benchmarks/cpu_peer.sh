#!/usr/bin/env bash
# guide_jax against a plain PyTorch loop of the same model (benchmarks/torch_peer.py) on
# this CPU, the non-finite guard's cost, and the fused output layer's CPU step time and
# XLA peak memory. Nothing else may run meanwhile. ~12 minutes on the 2-core machine.
# Each run's last line is its JSON; logs in benchmarks/cpu_peer_*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
run() { name=$1; shift; echo "== $name"; "$PY" -m guide_jax.bench "$@" 2>&1 | tee "benchmarks/cpu_peer_$name.log" | tail -8; }
run d256_f32 --config=experiments/bench_peer.py --peer --steps=6 \
    --arms=baseline,baseline_unguarded,kd
run d256_bf16 --config=experiments/bench_peer.py --peer --steps=6 --arms=baseline,kd \
    --config.model.dtype=bfloat16 --config.teacher.pretrain.model.dtype=bfloat16
run d512_f32 --config=experiments/bench_peer.py:d512 --peer --steps=5 --arms=baseline,kd
run d256_unfused --config=experiments/bench_peer.py --steps=6 --arms=baseline,kd \
    --config.loss.chunk_len=0
run d256_fused64 --config=experiments/bench_peer.py --steps=6 --arms=baseline,kd \
    --config.loss.chunk_len=64
