"""A diverging run: the step never applies a non-finite update; `stop` ends the run at the
first one without writing a checkpoint after it, `skip` drops and counts them."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from guide_jax.train import nonfinite, steps, trainer

from conftest import REPO, read_metrics


def test_a_nonfinite_step_leaves_params_and_moments_unchanged():
  tx = optax.adamw(0.1)
  params = {'w': jnp.ones((3,))}

  def objective(p, batch, step):  # NaN at step 1 only
    loss = jnp.sum(p['w'] * batch['x']) * jnp.where(step == 1, jnp.nan, 1.0)
    return loss, {'weight': jnp.sum(batch['loss_weights'])}

  step_fn = jax.jit(steps.make_train_step(objective, tx, 1, lambda s: 0.1))
  batch = {'x': jnp.ones((2, 3)), 'loss_weights': jnp.ones((2, 1))}
  state = steps.new_state(params, tx)
  state, m0 = step_fn(state, batch)
  assert not m0['nonfinite']
  before = jax.device_get(state)
  state, m1 = step_fn(state, batch)
  assert m1['nonfinite'] and int(state['step']) == 2
  for a, b in zip(jax.tree.leaves(before['params']) + jax.tree.leaves(before['opt_state']),
                  jax.tree.leaves(state['params']) + jax.tree.leaves(state['opt_state'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  state, m2 = step_fn(state, batch)  # and training goes on from there
  assert not m2['nonfinite'] and not np.array_equal(state['params']['w'], before['params']['w'])


def test_guard_policies():
  stop = nonfinite.Guard('stop', 3)
  assert stop.check([(1, False), (2, False)]) is None
  assert 'at step 4' in stop.check([(3, False), (4, True), (5, True)])
  skip = nonfinite.Guard('skip', 3)
  assert skip.check([(1, True), (2, True), (3, False), (4, True)]) is None
  assert skip.skipped == 3 and skip.in_a_row == 1
  message = skip.check([(5, True), (6, True)])
  assert '3 non-finite steps in a row, the last at step 6' in message and skip.skipped == 5


@pytest.fixture
def diverging(tiny_config):
  c = tiny_config
  c.train.learning_rate, c.train.grad_clip, c.train.warmup_steps = 1e6, 0.0, 0
  c.train.steps, c.train.log_every, c.train.eval_every = 12, 4, 100
  c.train.checkpoint_every = 1
  return c


def test_stop_ends_at_the_first_nonfinite_step_and_keeps_only_finite_checkpoints(
    diverging, tmp_path):
  with pytest.raises(nonfinite.NonFiniteError, match=r'at step (\d+)') as e:
    trainer.train(diverging, tmp_path)
  bad = int(re.search(r'at step (\d+)', str(e.value)).group(1))
  saved = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints'))
  assert saved and max(saved) < bad  # checkpoints are checked before each save
  last = [r for r in read_metrics(tmp_path) if 'train/loss' in r][-1]
  assert last['step'] == bad  # the diverged step is logged, for the record
  assert not (np.isfinite(last['train/loss']) and np.isfinite(last['train/grad_norm']))
  diverging.train.steps = max(saved)  # resume the last checkpoint: its parameters are finite
  restored = trainer.train(diverging, tmp_path)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored['params']))


def test_skip_counts_and_stops_after_too_many_in_a_row(diverging, tmp_path):
  diverging.train.on_nonfinite = 'skip'
  diverging.train.max_skips_in_a_row = 3
  with pytest.raises(nonfinite.NonFiniteError, match='3 non-finite steps in a row'):
    trainer.train(diverging, tmp_path)
  skipped = [r['train/skipped_steps'] for r in read_metrics(tmp_path)
             if 'train/skipped_steps' in r]
  assert skipped[-1] >= 3


# ~30 s; the guard keeps its in-process tests (stop, skip, unchanged state)
@pytest.mark.slow
def test_a_diverging_command_exits_1_with_one_line(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  r = subprocess.run(
      [sys.executable, '-m', 'guide_jax.main', '--config=experiments/lm_tiny.py',
       f'--workdir={tmp_path}', '--config.train.learning_rate=1e6', '--config.train.grad_clip=0',
       '--config.train.progress_bar=False'], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=300)
  lines = [line for line in r.stderr.splitlines() if line.strip()]
  assert r.returncode == 1 and lines[-1].startswith('error: non-finite loss or gradient norm '
                                                    'at step'), r.stderr[-2000:]
  assert len([line for line in lines if line.startswith('error')]) == 1
