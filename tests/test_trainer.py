import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from guide_jax import config as config_lib
from guide_jax.train import checkpointing, trainer

from conftest import REPO, read_metrics, train_losses


@pytest.fixture
def resume_config(tiny_config):
  c = tiny_config
  c.train.steps = 8
  c.train.log_every = 1
  c.train.eval_every = 4
  c.train.checkpoint_every = 4
  c.train.warmup_steps = 1
  return c


@pytest.mark.slow  # the default run has test_preemption's SIGTERM to a real process
def test_interrupted_and_resumed_equals_uninterrupted(resume_config, tmp_path):
  straight = trainer.train(resume_config, tmp_path / 'straight')
  first = trainer.train(resume_config, tmp_path / 'resumed', interrupt_at_step=3)
  assert first['interrupted'] and first['step'] == 3
  resumed = trainer.train(resume_config, tmp_path / 'resumed')
  assert resumed['step'] == 8 and not resumed['interrupted']
  for a, b in zip(jax.tree.leaves(straight['params']), jax.tree.leaves(resumed['params'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise
  assert train_losses(tmp_path / 'straight') == train_losses(tmp_path / 'resumed')
  assert straight['eval/loss'] == resumed['eval/loss']


def test_restore_onto_another_mesh(resume_config, tmp_path):
  resume_config.mesh.update(data=2, fsdp=2, tensor=2)
  first = trainer.train(resume_config, tmp_path, interrupt_at_step=4)
  saved = jax.device_get(first['params'])
  resume_config.mesh.update(data=1, fsdp=2, tensor=4)
  resume_config.train.steps = 4  # nothing left to train: the restored state comes back
  again = trainer.train(resume_config, tmp_path)
  assert again['step'] == 4
  wq = again['params']['blocks']['attn']['wq']
  assert wq.sharding.mesh.shape['tensor'] == 4
  for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(again['params'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_training_reduces_loss(tiny_config, tmp_path):
  out = trainer.train(tiny_config, tmp_path)
  losses = train_losses(tmp_path)
  assert losses[max(losses)] < losses[min(losses)] - 0.5
  records = read_metrics(tmp_path)
  evals = [r for r in records if 'eval/loss' in r]
  assert evals and np.isclose(evals[-1]['eval/ppl'], np.exp(evals[-1]['eval/loss']))
  perf = [r for r in records if 'perf/mfu' in r]
  assert perf and all(r['perf/tokens_per_sec'] > 0 and 0 < r['perf/mfu'] for r in perf)
  assert os.listdir(tmp_path / 'tensorboard')
  assert out['step'] == tiny_config.train.steps


@pytest.mark.parametrize('field,value,message', [
    ('model.n_kv_heads', 3, 'model.n_heads=4 is not divisible by model.n_kv_heads=3'),
    ('model.max_len', 32, 'model.max_len=32 is smaller than data.seq_len=64'),
    ('mesh.data', 3, 'mesh: data\\*fsdp\\*tensor = 3 but there are 8 devices'),
    ('data.global_batch_size', 12, 'not divisible by the batch shards '
     'mesh.data\\*mesh.fsdp\\*mesh.dcn_data\\*mesh.dcn_fsdp=8'),
    ('data.backend', 'nope', "data.backend='nope'"),
    ('model.position', 'alibi', "model.position='alibi'"),
    ('train.warmup_steps', 100, 'train.warmup_steps=100'),
    ('train.grad_accum', 3, 'not divisible by train.grad_accum=3'),
    ('data.eval_split', 'test', "data.eval_split='test' needs data.test_percent > 0 and the embedded"),
    ('data.test_percent', 80, 'data.test_percent=80 must be in \\[0, 80\\)'),
])
def test_validation_errors(tiny_config, field, value, message):
  section, name = field.split('.')
  tiny_config[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(tiny_config, num_devices=8)


def test_empty_corpus_and_vocab_mismatch_are_config_errors(tiny_config, tmp_path):
  tiny_config.data.embedded_root = str(tmp_path / 'nothing')
  with pytest.raises(config_lib.ConfigError, match='empty corpus'):
    trainer.train(tiny_config, tmp_path / 'wd')
  assert not (tmp_path / 'wd').exists()


def test_resuming_a_different_model_is_refused(resume_config, tmp_path):
  trainer.train(resume_config, tmp_path, interrupt_at_step=2)
  before = sorted(os.listdir(tmp_path / 'checkpoints'))
  resume_config.model.d_model = 32
  with pytest.raises(config_lib.ConfigError, match='model.d_model=32'):
    trainer.train(resume_config, tmp_path)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == before


def test_resume_accepts_older_configs_and_changed_execution_fields(tmp_path):
  """A checkpoint written before a model field existed resumes (the field at its default);
  remat, scan and query chunks change how the step runs, not the parameters, so they may
  change on resume; the vocabulary and the architecture may not."""
  model = config_lib.model_config()
  current = {'model': model.to_dict(), 'vocab_size': 4096}
  older = {k: v for k, v in model.to_dict().items() if k not in ('query_chunks', 'remat')}
  trainer._check_same_model({'model': older, 'vocab_size': 4096}, current, tmp_path)
  changed = dict(model.to_dict(), remat='dots', scan_layers=False, query_chunks=2,
                 unroll_on_cpu=False)
  trainer._check_same_model({'model': changed, 'vocab_size': 4096}, current, tmp_path)
  with pytest.raises(config_lib.ConfigError, match='model.mlp_dim=1024 but the checkpoint'):
    trainer._check_same_model({'model': dict(changed, mlp_dim=512), 'vocab_size': 4096},
                              current, tmp_path)
  with pytest.raises(config_lib.ConfigError, match='vocabulary size 4096 differs'):
    trainer._check_same_model({'model': older, 'vocab_size': 512}, current, tmp_path)


def test_corrupted_checkpoint_is_a_clear_error(resume_config, tmp_path):
  trainer.train(resume_config, tmp_path, interrupt_at_step=2)
  state_dir = tmp_path / 'checkpoints' / '2' / 'params'
  for root, _, files in os.walk(state_dir):
    for f in files:
      with open(os.path.join(root, f), 'wb') as fh:
        fh.write(b'garbage')
  with pytest.raises(checkpointing.CheckpointError, match='unreadable'):
    trainer.train(resume_config, tmp_path)
  assert (tmp_path / 'checkpoints' / '2').exists()


def run_cli(*args, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'guide_jax.main', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # the default run has the CLI through test_files_data and test_runlocal
def test_cli_end_to_end(tmp_path):
  out = run_cli('--config=experiments/lm_tiny.py', f'--workdir={tmp_path}',
                '--config.train.steps=10', '--config.train.progress_bar=False')
  assert out.returncode == 0, out.stderr[-3000:]
  records = read_metrics(tmp_path)
  assert any('eval/loss' in r for r in records)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['10']


def test_cli_bad_config_exits_2_with_one_line(tmp_path):
  out = run_cli('--config=experiments/lm_tiny.py', f'--workdir={tmp_path}',
                '--config.model.n_kv_heads=3')
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (
      'error: model.n_heads=4 is not divisible by model.n_kv_heads=3; '
      'choose n_kv_heads that divides n_heads')
  assert not tmp_path.exists() or not os.listdir(tmp_path)
