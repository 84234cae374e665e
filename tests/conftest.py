"""8 fake CPU devices before JAX initialises, and an isolated tokenizer/token cache."""

import json
import os
import sys
import tempfile

os.environ.setdefault('GUIDE_JAX_CACHE', tempfile.mkdtemp(prefix='guide_jax_test_cache_'))

from guide_jax import cli  # noqa: E402,F401  (the commands' XLA:CPU flags, here too)
import jax  # noqa: E402

jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_platforms', 'cpu')

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def read_metrics(workdir):
  """Every record of a run's metrics.jsonl."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def train_losses(workdir):
  """{step: train loss} of a run."""
  return {r['step']: r['train/loss'] for r in read_metrics(workdir) if 'train/loss' in r}


def load_experiment(name: str):
  from guide_jax import config as config_lib
  return config_lib.load_experiment_module(name).get_config()


@pytest.fixture
def tiny_config():
  c = load_experiment('lm_tiny')
  c.train.progress_bar = False
  c.train.async_checkpoints = False
  c.train.peak_flops = 1e11  # skip the matmul measurement in tests
  return c
