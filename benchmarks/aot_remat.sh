#!/usr/bin/env bash
# Per-chip memory of the paper configs' GUIDE+KD step with the fused output layer (the
# default) and model.remat='save_dot_except_mlp' (the MLP recomputed in the backward)
# instead of their 'dots', compiled with libtpu (WORKSPACE.md: PY=/tmp/tv/bin/python);
# guide_400m also on half its slice. Compare with aot_fused.log. One JSON line a compile.
set -uo pipefail
PY=${PY:-/tmp/tv/bin/python}
REMAT=--config.model.remat=save_dot_except_mlp
echo "== guide_400m loss.chunk_len=-1 model.remat=save_dot_except_mlp (v5p:2x2x4)"
$PY -m guide_jax.aot --config=experiments/guide_400m.py --whole_step=false $REMAT | tail -1
echo "== guide_400m loss.chunk_len=-1 model.remat=save_dot_except_mlp topology=v5p:2x2x2"
$PY -m guide_jax.aot --config=experiments/guide_400m.py --whole_step=false $REMAT \
    --topology=v5p:2x2x2 | tail -1
for name in guide_1b guide_1b_v256k; do
  echo "== $name loss.chunk_len=-1 model.remat=save_dot_except_mlp"
  $PY -m guide_jax.aot --config=experiments/$name.py --whole_step=false $REMAT | tail -1
done
