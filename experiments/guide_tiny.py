"""Smallest teacher-then-GUIDE+KD student: used by the tests.

  python -m guide_jax.main --config=experiments/guide_tiny.py --workdir=/tmp/guide_tiny

Trains the lm_tiny teacher into WORKDIR/teacher first (once), then a half-width student
initialised by GUIDE and trained with CE + KD. About 1 minute on 2 CPU cores.
"""

from guide_jax import config as config_lib
from guide_jax import losses


def _experiment(name):
  return config_lib.load_experiment_module(name).get_config()


def get_config():
  teacher = _experiment('lm_tiny')
  c = _experiment('lm_tiny')
  c.teacher.pretrain = teacher          # trained into WORKDIR/teacher when absent
  c.model.d_model = 32                  # student: half the teacher's width
  c.model.n_heads = 2
  c.model.n_kv_heads = 1
  c.model.head_dim = 16
  c.model.mlp_dim = 64
  c.data.tokenizer = ''                 # the teacher's vocabulary file, read from its checkpoint
  c.guide = config_lib.guide_config()   # GUIDE defaults: embeddings + first block
  c.loss.kd = losses.weight_config(1.0) # CE + KD
  return c
