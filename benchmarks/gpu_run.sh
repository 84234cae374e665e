#!/usr/bin/env bash
# The GPU benchmark as run on a lent device machine (see benchmarks/README.md).
# 1. attention kernels: xla against cuDNN flash attention (models/attention.py), student
#    and teacher alike, arms baseline and kd, remat none, the default (fused) output layer;
# 2. the output layer: unfused (loss.chunk_len=0) and fused (the default) with xla attention.
# ml_collections travels as a wheel in .whl/, everything else is on the machine's image.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 -c "import jax, flax, optax; print(jax.__version__, flax.__version__, optax.__version__, jax.devices())" | tee -a $OUT/gpu.txt
for kernel in cudnn xla; do
  python3 -m guide_jax.bench --config=experiments/bench_gpu.py --steps=10 --arms=baseline,kd \
      --config.model.attention_kernel=$kernel \
      --config.teacher.pretrain.model.attention_kernel=$kernel 2>&1 \
      | tee $OUT/bench_attention_${kernel}.log
done
for chunk in 0 -1; do
  python3 -m guide_jax.bench --config=experiments/bench_gpu.py --steps=10 \
      --arms=baseline,guide,kd,guide_match_kd --config.loss.chunk_len=$chunk \
      --config.model.attention_kernel=xla --config.teacher.pretrain.model.attention_kernel=xla \
      2>&1 | tee $OUT/bench_chunk${chunk}.log
done
