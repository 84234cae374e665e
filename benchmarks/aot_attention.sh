#!/usr/bin/env bash
# Per-chip memory, XLA cost analysis and roofline of the paper configs' GUIDE+KD step with
# the xla attention kernel against splash (models/attention.py), compiled with libtpu
# (WORKSPACE.md: PY=/tmp/tv/bin/python). --attention_kernel sets student and teacher alike.
# One JSON line a compile (the aot command's last line); raw log: aot_attention.log.
set -uo pipefail
PY=${PY:-/tmp/tv/bin/python}
run() {  # label, then aot arguments
  local label=$1; shift
  echo "== $label"
  $PY -m guide_jax.aot "$@" 2>&1 | grep -v "^W\|^I" | tail -1
}
for kernel in xla splash; do
  run "guide_400m $kernel (v5p:2x2x4)" --config=experiments/guide_400m.py --attention_kernel=$kernel
  run "guide_1b $kernel (v5p:4x4x2)" --config=experiments/guide_1b.py --attention_kernel=$kernel
done
# guide_1b_8k: the smallest v5p slice that holds it with splash, and xla on that slice
for topo in v5p:4x4x2 v5p:2x2x4 v5p:2x2x2; do
  run "guide_1b_8k splash ($topo)" --config=experiments/guide_1b_8k.py --attention_kernel=splash \
      --topology=$topo --whole_step=false
done
# remat with splash: the configs' 'dots' against 'save_dot_except_mlp' (the MLP recomputed)
for name in guide_400m guide_1b guide_1b_8k; do
  run "$name splash remat=save_dot_except_mlp" --config=experiments/$name.py \
      --attention_kernel=splash --config.model.remat=save_dot_except_mlp --whole_step=false
done
# the xla kernel at 8k on the slice guide_1b_8k states
run "guide_1b_8k xla (its slice)" --config=experiments/guide_1b_8k.py --attention_kernel=xla \
    --whole_step=false
# smaller slices now that the scores are gone
run "guide_1b_8k xla (v5p:2x2x4, the smallest slice splash fits with dots)" \
    --config=experiments/guide_1b_8k.py --attention_kernel=xla --topology=v5p:2x2x4 --whole_step=false
run "guide_1b_8k splash remat=save_dot_except_mlp (v5p:2x2x2)" --config=experiments/guide_1b_8k.py \
    --attention_kernel=splash --config.model.remat=save_dot_except_mlp --topology=v5p:2x2x2 --whole_step=false
run "guide_400m splash remat=save_dot_except_mlp (v5p:2x2x2)" --config=experiments/guide_400m.py \
    --attention_kernel=splash --config.model.remat=save_dot_except_mlp --topology=v5p:2x2x2 --whole_step=false
run "guide_1b splash (v5p:2x2x4)" --config=experiments/guide_1b.py --attention_kernel=splash \
    --topology=v5p:2x2x4 --whole_step=false
run "guide_1b_8k xla remat=save_dot_except_mlp (v5p:2x2x2)" --config=experiments/guide_1b_8k.py \
    --attention_kernel=xla --config.model.remat=save_dot_except_mlp --topology=v5p:2x2x2 --whole_step=false
