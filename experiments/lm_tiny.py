"""The smallest config: used by the tests and for a quick smoke run.

  python -m guide_jax.main --config=experiments/lm_tiny.py --workdir=/tmp/lm_tiny

About 30 s on 2 CPU cores once the tokenizer is cached (training the 512-piece
SentencePiece model on the stdlib's `email` package takes ~10 s the first time).
"""

from guide_jax import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.model.vocab_size = 512      # small tokenizer: trains in seconds
  c.model.d_model = 64
  c.model.n_layers = 2
  c.model.n_heads = 4
  c.model.n_kv_heads = 2        # GQA, so every test exercises grouped heads
  c.model.head_dim = 16
  c.model.mlp_dim = 128
  c.model.max_len = 64
  c.data.seq_len = 64
  c.data.global_batch_size = 8
  c.data.embedded_root = _email_package()  # a small real corpus: ~40 files
  c.data.validation_percent = 20           # enough validation rows from few files
  c.data.eval_batches = 2
  c.train.steps = 20
  c.train.warmup_steps = 5
  c.train.log_every = 5
  c.train.eval_every = 10
  c.train.checkpoint_every = 10
  return c


def _email_package() -> str:
  import os
  import sysconfig
  return os.path.join(sysconfig.get_paths()['stdlib'], 'email')


def get_sweep(name):
  """`seeds`: two runs that differ only in seed (the launcher tests use it)."""
  if name != 'seeds':
    raise ValueError(f'lm_tiny has no sweep {name!r}; it has: seeds')
  return [{'name': f'seed{seed}', 'train.seed': seed} for seed in (0, 1)]
