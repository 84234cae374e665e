#!/bin/bash
# Per-chip memory of guide_1b's GUIDE+KD step, online teacher against a k = 64
# teacher-logits cache, compiled for its slice (v5p:4x4x2) by libtpu (the libtpu venv of WORKSPACE.md).
#   bash benchmarks/aot_teacher_cache.sh > benchmarks/aot_teacher_cache.log 2>&1
set -u
PY=${PY:-/tmp/tv/bin/python}
for cfg in guide_1b; do
  for k in 0 64; do
    echo "== $cfg, teacher_logits_top_k=$k"
    $PY -m guide_jax.aot --config=experiments/$cfg.py --whole_step=false --teacher_logits_top_k=$k 2>&1 | grep -v '^{' | grep -v '^W\|^I'
  done
done
