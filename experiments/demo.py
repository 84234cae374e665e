"""The embedded-default job behind `make demo`: pretrain a small LM on the stdlib corpus.

  python -m guide_jax.main --config=experiments/demo.py --workdir=workdirs/demo

About 4-5 minutes on 2 CPU cores (the first run also trains the 4096-piece tokenizer,
about a minute, cached afterwards under ~/.cache/guide_jax).
"""

from guide_jax import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.model.vocab_size = 4096
  c.model.d_model = 256
  c.model.n_layers = 4
  c.model.n_heads = 4
  c.model.n_kv_heads = 4
  c.model.head_dim = 64
  c.model.mlp_dim = 768
  c.model.max_len = 256
  c.data.seq_len = 256
  c.data.global_batch_size = 16
  c.train.steps = 300
  c.train.warmup_steps = 30
  c.train.learning_rate = 3e-3
  c.train.log_every = 20
  c.train.eval_every = 100
  c.train.checkpoint_every = 100
  return c
