"""guide_1b with a 256k vocabulary (Gemma-sized) for teacher and student: the AOT check of
what the output layer's memory does at real teachers' vocabularies.

  python -m guide_jax.aot --config=experiments/guide_1b_v256k.py --whole_step=false
  python -m guide_jax.aot --config=experiments/guide_1b_v256k.py --whole_step=false \
      --config.loss.chunk_len=0      # unfused, for comparison

Not for training as is (no 256k tokenizer is named): data.tokenizer must be set to one.
"""

from guide_jax import config as config_lib

VOCAB = 256_000


def _guide_1b():
  return config_lib.load_experiment_module('guide_1b')


def teacher_config():
  c = _guide_1b().teacher_config()
  c.model.vocab_size = VOCAB
  return c


def get_config():
  c = _guide_1b().get_config()
  c.model.vocab_size = VOCAB
  return c
