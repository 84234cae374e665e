"""Distillation: the KD/MATCH loss, the frozen teacher, and the teacher-then-student CLI."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from guide_jax import losses
from guide_jax.models import transformer
from guide_jax.train import checkpointing, trainer

from conftest import load_experiment
from test_trainer import read_metrics, run_cli


@pytest.mark.parametrize('kind', losses.KD_KINDS)
def test_kd_is_zero_with_zero_gradient_when_logits_match(kind):
  z = jax.random.normal(jax.random.key(0), (3, 5, 11)) * 3
  value = losses.kd_per_token(z, z, 2.0, kind)
  np.testing.assert_allclose(value, 0.0, atol=1e-5)
  grad = jax.grad(lambda s: losses.kd_per_token(s, z, 2.0, kind).sum())(z)
  np.testing.assert_allclose(grad, 0.0, atol=1e-5)


@pytest.mark.parametrize('kind', losses.KD_KINDS)
def test_kd_gradient_matches_finite_differences(kind):
  jax.config.update('jax_enable_x64', True)
  try:
    s = jax.random.normal(jax.random.key(1), (2, 7), jnp.float64)
    t = jax.random.normal(jax.random.key(2), (2, 7), jnp.float64)
    f = lambda x: jnp.sum(losses.kd_per_token(x, t, 1.5, kind, 0.3)).astype(jnp.float64)
    g = jax.grad(f)(s)
    eps = 1e-4
    for idx in [(0, 0), (1, 3), (0, 6)]:
      e = jnp.zeros_like(s).at[idx].set(eps)
      fd = (f(s + e) - f(s - e)) / (2 * eps)
      np.testing.assert_allclose(g[idx], fd, rtol=1e-5, atol=1e-8)
    if kind == 'forward_kl':  # closed form: d/ds tau^2 KL(p_T || p_S) = tau (p_S - p_T)
      want = 1.5 * (jax.nn.softmax(s / 1.5) - jax.nn.softmax(t / 1.5))
      np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-8)
  finally:
    jax.config.update('jax_enable_x64', False)


def test_forward_kl_value_and_temperature_scaling():
  s = jnp.array([[0.0, 1.0, 2.0]])
  t = jnp.array([[2.0, 1.0, 0.0]])
  p_t, p_s = jax.nn.softmax(t / 2), jax.nn.softmax(s / 2)
  want = 4 * jnp.sum(p_t * (jnp.log(p_t) - jnp.log(p_s)))
  np.testing.assert_allclose(losses.kd_per_token(s, t, 2.0)[0], want, rtol=1e-5)


def test_schedules():
  cfg = losses.weight_config
  at = lambda c, t: float(losses.weight_schedule(c, 100)(t))
  assert at(cfg(0.5), 70) == 0.5
  assert at(cfg(1.0, 'linear', 0.0), 25) == pytest.approx(0.75, abs=1e-6)
  assert at(cfg(1.0, 'cosine', 0.0), 50) == pytest.approx(0.5, abs=1e-6)
  assert at(cfg(1.0, 'cosine', 0.2, steps=10), 99) == pytest.approx(0.2, abs=1e-6)
  assert at(cfg(1.0, 'step', 0.0, steps=30), 29) == 1.0
  assert at(cfg(1.0, 'step', 0.0, steps=30), 30) == 0.0


@pytest.mark.parametrize('field,value,message', [
    ('temperature', 0.0, 'loss.temperature=0.0 must be > 0'),
    ('kd_kind', 'mse', "loss.kd_kind='mse'"),
    ('jsd_beta', 1.0, 'loss.jsd_beta=1.0'),
])
def test_distill_loss_validates_settings(field, value, message):
  cfg = losses.loss_config()
  cfg[field] = value
  with pytest.raises(ValueError, match=message):
    losses.DistillLoss(cfg, 10)


def test_negative_weight_is_refused():
  cfg = losses.loss_config()
  cfg.kd.value = -1.0
  with pytest.raises(ValueError, match='loss.kd'):
    losses.DistillLoss(cfg, 10)


def test_masked_tokens_do_not_count():
  cfg = losses.loss_config()
  cfg.kd.value = 1.0
  loss = losses.DistillLoss(cfg, 10)
  s = jax.random.normal(jax.random.key(3), (1, 4, 9))
  t = jax.random.normal(jax.random.key(4), (1, 4, 9))
  batch = {'targets': jnp.array([[1, 2, 3, 4]]), 'loss_weights': jnp.array([[1., 1., 0., 0.]])}
  full, sums = loss.sums(0, s, batch, t)
  changed = s.at[:, 2:].set(100.0)
  again, _ = loss.sums(0, changed, batch, t)
  np.testing.assert_allclose(full, again, rtol=1e-6)
  assert float(sums['weight']) == 2.0


@pytest.fixture
def distill_config():
  c = load_experiment('guide_tiny')
  for cfg in (c, c.teacher.pretrain):
    cfg.train.progress_bar = False
    cfg.train.async_checkpoints = False
    cfg.train.peak_flops = 1e11
  c.train.steps = 6
  c.train.warmup_steps = 1
  c.train.log_every = 1
  c.train.eval_every = 6
  c.train.checkpoint_every = 3
  c.teacher.pretrain.train.steps = 10
  c.loss.match = losses.weight_config(0.5, 'linear', 0.0)
  return c


def test_teacher_frozen_student_checkpoints_and_guide_head_start(distill_config, tmp_path):
  """One GUIDE+MATCH+KD run: the teacher stays bitwise as pretrained, the student's
  checkpoints hold no teacher, the distillation metrics are logged; and a random-init
  student from the same teacher starts with a much worse CE than the GUIDE-initialised one
  (train/ce of step 1 is computed from the initial params)."""
  run = tmp_path / 'run'
  out = trainer.train(distill_config, run)
  teacher_ckpt = checkpointing.Checkpointer(run / 'teacher' / 'checkpoints', 1, False)
  abstract = transformer.abstract_params(distill_config.teacher.pretrain.model)
  stored = teacher_ckpt.restore_params(10, abstract)
  for a, b in zip(jax.tree.leaves(stored), jax.tree.leaves(out['teacher_params'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # bitwise unchanged
  # the student's checkpoint holds exactly the student's params: no teacher leaf
  student_ckpt = checkpointing.Checkpointer(run / 'checkpoints', 1, False)
  saved = student_ckpt.restore_params(6, transformer.abstract_params(distill_config.model))
  assert jax.tree.structure(saved) == jax.tree.structure(out['params'])
  item_dirs = set(os.listdir(run / 'checkpoints' / '6'))
  assert 'teacher' not in ''.join(item_dirs)
  records = read_metrics(run)
  train_records = [r for r in records if 'train/kd' in r]
  assert train_records and all('train/teacher_ce' in r and 'train/agreement' in r and
                               'train/match' in r for r in train_records)
  # MATCH is 0 at GUIDE init: the first step's loss has no MATCH part
  assert train_records[0]['train/match'] == pytest.approx(0.0, abs=1e-7)
  assert train_records[-1]['train/match'] > 0
  assert any('teacher/approx_eval_loss' in r for r in records)
  assert 0 < out['guide/explained_variance'] <= 1
  assert all(r['perf/mfu_teacher'] > 0 for r in records if 'perf/mfu_teacher' in r)
  baseline = distill_config.copy_and_resolve_references()
  baseline.train.steps = 2
  baseline.guide.init = 'none'
  baseline.loss.kd.value = baseline.loss.match.value = 0.0
  baseline.teacher.checkpoint = str(run / 'teacher')
  trainer.train(baseline, tmp_path / 'random_init')
  first_ce = lambda d: [r for r in read_metrics(d) if 'train/ce' in r][0]['train/ce']
  assert first_ce(run) < first_ce(tmp_path / 'random_init') - 0.3


@pytest.mark.slow  # the default run has test_files_data's CLI teacher-then-student
def test_cli_teacher_then_guide_kd_student(tmp_path):
  out = run_cli('--config=experiments/guide_tiny.py', f'--workdir={tmp_path}',
                '--config.train.steps=4', '--config.teacher.pretrain.train.steps=6',
                '--config.teacher.pretrain.train.warmup_steps=1',
                '--config.train.warmup_steps=1', '--config.train.progress_bar=False',
                '--config.teacher.pretrain.train.progress_bar=False')
  assert out.returncode == 0, out.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / 'teacher' / 'checkpoints')) == ['6']
  records = read_metrics(tmp_path)
  assert any('train/kd' in r for r in records)
  assert any('eval/loss' in r for r in records)
  config = json.loads((tmp_path / 'config.json').read_text())
  assert config['data']['tokenizer'].endswith('spm.model')


@pytest.mark.parametrize('flag,message', [
    ('--config.model.d_model=128', 'student model.d_model=128 exceeds the teacher'),
    ('--config.teacher.checkpoint=/nonexistent/teacher', 'has no checkpoints/ directory'),
])
def test_cli_startup_checks_exit_2(tmp_path, flag, message):
  teacher_dir = tmp_path / 'wd'
  out = run_cli('--config=experiments/guide_tiny.py', f'--workdir={teacher_dir}', flag,
                '--config.teacher.pretrain.train.steps=2',
                '--config.teacher.pretrain.train.warmup_steps=1',
                '--config.teacher.pretrain.train.progress_bar=False')
  assert out.returncode == 2, out.stderr[-2000:]
  assert message in out.stderr.strip().splitlines()[-1]


@pytest.mark.slow  # `make demo` runs it
def test_demo_runner_writes_the_summary(distill_config, tmp_path):
  from guide_jax import demo
  distill_config.train.steps = 3
  distill_config.loss.match.value = 0.0
  summary = demo.run(distill_config, tmp_path)
  saved = json.loads((tmp_path / 'demo_summary.json').read_text())
  for key in ('teacher_eval_loss', 'baseline_eval_loss', 'guide_kd_eval_loss', 'gap_closure',
              'explained_variance'):
    assert saved[key] == pytest.approx(summary[key])
  want = (saved['baseline_eval_loss'] - saved['guide_kd_eval_loss']) / (
      saved['baseline_eval_loss'] - saved['teacher_eval_loss'])
  assert saved['gap_closure'] == pytest.approx(want, rel=1e-6)
  assert 'gap closure' in demo.table(summary)
