"""Real preemptions of a training process: SIGTERM (what a TPU preemption sends) saves a
checkpoint and exits 0; SIGKILL at random moments, during checkpoint writes included,
loses at most the steps since the last checkpoint. Either way, resuming ends bitwise equal
to a run that was never stopped."""

import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from guide_jax.train import trainer

from conftest import REPO, read_metrics

STEPS = 30


# The same 8 CPU devices as this process (conftest), so that the reference run below
# compiles the same program.
ENV = {**os.environ, 'JAX_NUM_CPU_DEVICES': '8', 'JAX_PLATFORMS': 'cpu'}


def _command(workdir, checkpoint_every):
  return [sys.executable, '-m', 'guide_jax.main', '--config=experiments/lm_tiny.py',
          f'--workdir={workdir}', f'--config.train.steps={STEPS}',
          '--config.train.log_every=1', '--config.train.eval_every=1000',
          f'--config.train.checkpoint_every={checkpoint_every}',
          '--config.train.progress_bar=False', '--config.train.peak_flops=1e11']


def _reference(tiny_config, tmp_path, checkpoint_every):
  """The run never stopped, in a fresh process like the interrupted one: an in-process run
  would share this process's state with every test before it."""
  c = tiny_config
  c.train.steps, c.train.log_every, c.train.eval_every = STEPS, 1, 1000
  c.train.checkpoint_every = checkpoint_every
  subprocess.run(_command(tmp_path / 'reference', checkpoint_every), cwd=REPO, env=ENV,
                 check=True, capture_output=True)
  return c, _params_of(c, tmp_path / 'reference')


def _params_of(config, workdir):
  """The params of a finished run's last checkpoint (train() resumes it and returns)."""
  return trainer.train(config, workdir)['params']


def _inode(path):
  return path.stat().st_ino if path.exists() else None


def _wait_for_step(workdir, step, process, stale_inode=None, timeout=240):
  """Until this process has logged `step`. A resumed run first rewrites metrics.jsonl
  (a new file): records of the killed process in the old one do not count."""
  start = time.monotonic()
  path = workdir / 'metrics.jsonl'
  while time.monotonic() - start < timeout:
    assert process.poll() is None, process.communicate()[1][-2000:]
    if _inode(path) not in (None, stale_inode) and any(
        r.get('step', 0) >= step and 'train/loss' in r for r in read_metrics(workdir)):
      return
    time.sleep(0.05)
  raise TimeoutError(f'no step {step} in {timeout} s')


def _sigterm_at_step_5(workdir, checkpoint_every):
  """SIGTERM once step 5 is logged: the run saves a checkpoint and exits 0."""
  process = subprocess.Popen(_command(workdir, checkpoint_every), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  _wait_for_step(workdir, 5, process)
  sent = time.monotonic()
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=120)
  saved_after = time.monotonic() - sent
  assert process.returncode == 0, err[-2000:]
  step = max(int(s) for s in os.listdir(workdir / 'checkpoints'))
  assert 5 <= step < STEPS and f'preempted at step {step}' in out
  print(f'SIGTERM to exit with the checkpoint saved: {saved_after:.2f} s')


def test_sigterm_saves_a_checkpoint_exits_0_and_resumes(tmp_path):
  """The bitwise comparison with a run never stopped is in the slow test below."""
  workdir = tmp_path / 'run'
  _sigterm_at_step_5(workdir, 1000)
  assert len(os.listdir(workdir / 'checkpoints')) == 1  # the preemption's, between intervals
  assert subprocess.run(_command(workdir, 1000), cwd=REPO, env=ENV,
                        capture_output=True).returncode == 0
  steps_logged = [r['step'] for r in read_metrics(workdir) if 'train/loss' in r]
  assert steps_logged == list(range(1, STEPS + 1))  # as if never stopped
  assert str(STEPS) in os.listdir(workdir / 'checkpoints')


@pytest.mark.slow
def test_sigterm_then_sigkills_at_random_moments_then_resume_ends_bitwise_equal(
    tiny_config, tmp_path):
  """A SIGTERM first (a checkpoint between intervals), then each trial kills the run at a
  random moment: during start-up (first trial), or a random fraction of a step after a
  randomly chosen step was logged, which with a checkpoint every 3 steps often lands while
  orbax is writing one."""
  config, reference = _reference(tiny_config, tmp_path, checkpoint_every=3)
  workdir = tmp_path / 'run'
  _sigterm_at_step_5(workdir, 3)
  rng = random.Random(0)
  trials = 6
  for trial in range(trials):
    stale = _inode(workdir / 'metrics.jsonl')
    process = subprocess.Popen(_command(workdir, 3), cwd=REPO, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if trial == 0:
      time.sleep(rng.uniform(1.0, 5.0))
    else:
      ckpts = workdir / 'checkpoints'
      saved = max((int(d) for d in os.listdir(ckpts) if d.isdigit()), default=0) if (
          ckpts.exists()) else 0
      _wait_for_step(workdir, rng.randint(saved + 1, min(saved + 5, STEPS - 2)), process,
                     stale)
      time.sleep(rng.uniform(0.0, 0.4))
    assert process.poll() is None, 'the run finished before it could be killed'
    process.kill()
    process.wait()
  assert subprocess.run(_command(workdir, 3), cwd=REPO, env=ENV,
                        capture_output=True).returncode == 0
  print(f'{trials} SIGKILLs, then the run finished')
  for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(_params_of(config, workdir))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  steps_logged = [r['step'] for r in read_metrics(workdir) if 'train/loss' in r]
  assert steps_logged == list(range(1, STEPS + 1))
