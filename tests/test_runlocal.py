"""The paper configs on a laptop: `runlocal` runs end to end; what cannot run fails fast."""

import json
import math
import os
import subprocess
import sys
import time

import jax
import pytest

from guide_jax import config as config_lib
from guide_jax.models import transformer
from guide_jax.train import preflight

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  start = time.perf_counter()
  r = subprocess.run([sys.executable, '-m', 'guide_jax.main', *args], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=900)
  return r, time.perf_counter() - start


@pytest.mark.parametrize('name', ['guide_1b', 'guide_400m'])
def test_runlocal_keeps_the_architecture(name):
  full = config_lib.load_experiment_module(name).get_config()
  local = config_lib.load_experiment_module(name).get_config('runlocal')
  teacher = local.teacher.pretrain
  for field in ('position', 'norm', 'mlp', 'tie_embeddings', 'dtype', 'param_dtype', 'remat',
                'scan_layers'):
    assert local.model[field] == full.model[field] == teacher.model[field]
  assert local.model.n_heads // local.model.n_kv_heads == full.model.n_heads // full.model.n_kv_heads
  assert local.guide.to_dict() == full.guide.to_dict() and local.loss == full.loss
  assert local.mesh == full.mesh and local.teacher.dtype == full.teacher.dtype
  assert local.model.d_model < teacher.model.d_model and local.model.n_layers < teacher.model.n_layers


# ~60 s each (a teacher and a student compiled and trained in a subprocess); the same
# trainer path runs by default in test_distill and test_hf's end-to-end test.
@pytest.mark.slow
@pytest.mark.parametrize('name', ['guide_1b', 'guide_400m'])
def test_runlocal_runs(name, tmp_path):
  work = tmp_path / 'run'
  r, seconds = _main(f'--config=experiments/{name}.py:runlocal', f'--workdir={work}',
                     '--config.train.progress_bar=False',
                     '--config.teacher.pretrain.train.progress_bar=False')
  assert r.returncode == 0, r.stderr[-3000:]
  records = [json.loads(line) for line in (work / 'metrics.jsonl').read_text().splitlines()]
  final = [x for x in records if 'eval/loss' in x][-1]
  assert final['step'] == 30 and final['eval/loss'] < 6.0
  assert 'teacher/eval_loss' in {k for x in records for k in x}
  print(f'{name}:runlocal took {seconds:.0f} s')


def test_unreachable_remote_tokenizer_fails_fast(tmp_path):
  """guide_1b as is names gs://t5-data; offline, that is one line within seconds (online,
  the bucket path below does not exist: also one line)."""
  work = tmp_path / 'run'
  r, seconds = _main('--config=experiments/guide_1b.py', f'--workdir={work}',
                     '--config.data.tokenizer=gs://guide-jax-no-such-bucket/sp.model')
  lines = [line for line in r.stderr.splitlines() if line.strip()]
  assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
  assert lines[0].startswith('error: data.tokenizer=') and ('unreachable' in lines[0] or
                                                           'does not exist' in lines[0])
  assert seconds < 60 and not work.exists()


def test_oversized_run_is_refused_before_building(tmp_path):
  work = tmp_path / 'run'
  r, _ = _main('--config=experiments/guide_1b.py', f'--workdir={work}',
               f'--config.data.tokenizer={tmp_path}/local.model')
  lines = [line for line in r.stderr.splitlines() if line.strip()]
  assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
  assert 'needs at least' in lines[0] and 'runlocal' in lines[0] and 'GiB' in lines[0]
  assert not work.exists()


def test_memory_estimate_counts_student_state_teacher_and_logits():
  c = config_lib.load_experiment_module('guide_tiny').get_config()
  need = preflight.memory_estimate(c, c.teacher.pretrain.model)
  count = lambda m: sum(math.prod(a.shape) for a in jax.tree.leaves(
      transformer.abstract_params(m)))
  tokens = c.data.global_batch_size * c.data.seq_len
  assert need == {'student': 16 * count(c.model),           # f32 params, 2 moments, grads
                  'logits': 3 * 4 * tokens * c.model.vocab_size,  # student (+grad), teacher
                  'teacher': 4 * count(c.teacher.pretrain.model)}
