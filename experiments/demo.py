"""The embedded-default GUIDE demo behind `make demo`.

  python -m guide_jax.demo --config=experiments/demo.py --workdir=workdirs/demo

Pretrains a ~2.6M-parameter teacher on the stdlib corpus (into WORKDIR/teacher, reused
afterwards), then trains two half-width students for the same tokens: a GUIDE+KD student
(GUIDE init of embeddings + all blocks, CE + forward-KL) and a randomly initialised
CE-only baseline. Prints a table of eval losses and the gap closure, and writes it to
WORKDIR/demo_summary.json. Measured 10 min 8 s alone on 2 CPU cores (fresh workdir,
tokenizer cached; teacher ~4 min). The first run also trains the 4096-piece tokenizer
(~1 minute, cached under ~/.cache/guide_jax).

`python -m guide_jax.main --config=experiments/demo.py --workdir=DIR` trains the
GUIDE+KD student alone (and its teacher if absent).
"""

from guide_jax import config as config_lib
from guide_jax import losses


def _common(c):
  c.model.vocab_size = 4096
  c.model.max_len = 128
  c.model.n_layers = 4
  c.model.head_dim = 48
  c.data.seq_len = 128
  c.data.global_batch_size = 16
  c.data.eval_batches = 16
  c.train.steps = 300
  c.train.warmup_steps = 30
  c.train.learning_rate = 3e-3
  c.train.log_every = 25
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  return c


def teacher_config():
  c = _common(config_lib.base_config())
  c.model.d_model = 192
  c.model.n_heads = 4
  c.model.n_kv_heads = 4
  c.model.mlp_dim = 512
  return c


def get_config():
  c = _common(config_lib.base_config())
  c.teacher.pretrain = teacher_config()
  c.model.d_model = 96              # student: half the width, half the heads and MLP
  c.model.n_heads = 2
  c.model.n_kv_heads = 2
  c.model.mlp_dim = 256
  c.guide = config_lib.guide_config()
  # guide.blocks='all' (uniform selection of teacher blocks over depth), not the paper's
  # first block only: in the CPU ablation (results/cpu_study/ablation/report.md) it was
  # the one option that clearly helped (validation loss 2.843 vs 2.888 at 100 steps; the
  # others moved it by < 0.006).
  c.guide.blocks = 'all'
  c.loss.kd = losses.weight_config(1.0)
  c.train.seed = 1                  # student init differs from the teacher's
  return c
