"""guide_1b at 8k context: the same ~1.0B student and ~3.4B teacher, 8,192 tokens a row.

  python -m guide_jax.main --config=experiments/guide_1b_8k.py --workdir=gs://BUCKET/guide_1b_8k \
      --config.teacher.checkpoint=gs://BUCKET/teacher_3b_8k
  python -m guide_jax.aot --config=experiments/guide_1b_8k.py      # fit check, libtpu

The teacher must have been trained with an 8k position table (learned positions: its
max_len is 8,192 here, and GUIDE projects P_S = P_T[:8192] @ M). Tokens per step stay
guide_1b's (128 rows x 8,192 = 512 x 2,048). Attention runs the splash kernel on TPU
(model.attention_kernel='auto') and the MLP is recomputed in the backward
(model.remat='save_dot_except_mlp'): the GUIDE+KD step then fits 8 v5p chips (v5p:2x2x2,
73.3 of 95 GiB per chip). The xla kernel's explicit [rows, heads, 8192, 8192] scores do not
fit that slice, nor twice it with remat 'dots' (benchmarks/README.md, "Fused attention
kernels").
"""

from guide_jax import config as config_lib

SEQ_LEN = 8192


def _guide_1b():
  return config_lib.load_experiment_module('guide_1b')


def _long(c):
  c.model.max_len = SEQ_LEN
  c.model.remat = 'save_dot_except_mlp'   # the MLP recomputed in the backward
  c.data.seq_len = SEQ_LEN
  c.data.global_batch_size = 128
  return c


def teacher_config():
  return _long(_guide_1b().teacher_config())


def get_config():
  c = _long(_guide_1b().get_config())
  c.topology = 'v5p:2x2x2'   # the smallest v5p slice it fits (with splash attention)
  return c
