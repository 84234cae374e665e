#!/usr/bin/env bash
# Per-chip memory of the paper configs' GUIDE+KD step, unfused and fused output layer
# (loss.chunk_len 0 vs the default), compiled for their TPU slices with libtpu (see
# WORKSPACE.md for the side venv: PY=/tmp/tv/bin/python). One JSON line per compile.
set -uo pipefail
PY=${PY:-/tmp/tv/bin/python}
for name in guide_400m guide_1b guide_1b_v256k; do
  for chunk in 0 -1; do
    echo "== $name loss.chunk_len=$chunk"
    $PY -m guide_jax.aot --config=experiments/$name.py --whole_step=false \
        --config.loss.chunk_len=$chunk | tail -1
  done
done
