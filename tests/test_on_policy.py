"""On-policy distillation (guide_jax/train/on_policy.py): the loss against numpy, the rows
the student writes (prompts, EOS masking), the sampler's greedy output, no gradient through
sampling, the refusals; and (slow) fraction=0 is KD bitwise, a resumed run is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_experiment, read_metrics, train_losses
from guide_jax import config as config_lib
from guide_jax import losses, sweep
from guide_jax.evals import own_data
from guide_jax.infer import sampler as sampler_lib
from guide_jax.models import transformer
from guide_jax.train import on_policy, trainer


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _numpy_divergence(log_t, log_s, kind, beta):
  kl = lambda lp, lq: (np.exp(lp) * (lp - lq)).sum(-1)
  if kind == 'forward_kl':
    return kl(log_t, log_s)
  if kind == 'reverse_kl':
    return kl(log_s, log_t)
  log_m = np.logaddexp(np.log(beta) + log_t, np.log(1 - beta) + log_s)
  return beta * kl(log_t, log_m) + (1 - beta) * kl(log_s, log_m)


@pytest.mark.parametrize('kind', ['reverse_kl', 'forward_kl', 'jsd'])
def test_loss_on_a_fixed_sample_equals_numpy(kind):
  """Rows 0-1 on-policy, rows 2-3 data: the data rows get CE + KD as without on-policy
  rows, the sampled positions w_kd x divergence(kind) at temperature 1 (loss.temperature
  is KD's, not this), computed here by hand in float64."""
  rng = np.random.default_rng(0)
  b, s, v = 4, 6, 13
  zs, zt = rng.normal(size=(b, s, v)) * 2, rng.normal(size=(b, s, v)) * 2
  targets = rng.integers(0, v, size=(b, s))
  weights = (rng.random((b, s)) > 0.3).astype(np.float32)
  mask = np.array([1, 1, 0, 0], np.float32)[:, None] * np.ones((1, s), np.float32)
  cfg = losses.loss_config()
  cfg.kd = losses.weight_config(0.7)
  cfg.temperature = 2.0
  cfg.on_policy.kind, cfg.on_policy.beta = kind, 0.3
  loss = losses.DistillLoss(cfg, 10)
  batch = {'targets': jnp.asarray(targets), 'loss_weights': jnp.asarray(weights),
           losses.ON_POLICY: jnp.asarray(mask)}
  total, sums = loss.sums(0, jnp.asarray(zs, jnp.float32), batch, jnp.asarray(zt, jnp.float32))

  log_s, log_t = _log_softmax(zs), _log_softmax(zt)
  w_op, w_data = weights * mask, weights * (1 - mask)
  op = (_numpy_divergence(log_t, log_s, kind, 0.3) * w_op).sum()
  reverse = (_numpy_divergence(log_t, log_s, 'reverse_kl', 0.3) * w_op).sum()
  nll = (-np.take_along_axis(log_t, targets[..., None], -1)[..., 0] * w_op).sum()
  ce = (-np.take_along_axis(log_s, targets[..., None], -1)[..., 0] * w_data).sum()
  kd = 4.0 * (_numpy_divergence(_log_softmax(zt / 2), _log_softmax(zs / 2), 'forward_kl', 0.5)
              * w_data).sum()
  np.testing.assert_allclose(float(sums['on_policy_loss']), op, rtol=1e-5)
  np.testing.assert_allclose(float(sums['on_policy_kl']), reverse, rtol=1e-5)
  np.testing.assert_allclose(float(sums['on_policy_teacher_nll']), nll, rtol=1e-5)
  np.testing.assert_allclose(float(sums['on_policy_weight']), w_op.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(sums['weight']), w_data.sum(), rtol=1e-5)
  np.testing.assert_allclose(float(sums['kd']), kd, rtol=1e-5)
  np.testing.assert_allclose(float(total), ce + 0.7 * kd + 0.7 * op, rtol=1e-5)


def test_prompts_and_rows_mask_after_eos():
  """A prompt is the row's first document piece, left-padded; the row is prompt + sample
  with weight on each sample up to and including the first EOS; a row starting with
  padding has no weight."""
  eos, p, seq_len = 1, 4, 10  # 4 prompt slots, 4 samples
  batch = {'inputs': jnp.array([[5, 6, 7, 8, 9, 9], [5, 6, 1, 3, 4, 9], [0, 0, 0, 0, 0, 0]]),
           'segment_ids': jnp.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 2, 2, 2], [0] * 6])}
  tokens, pad, usable = on_policy.prompts(batch, p)
  np.testing.assert_array_equal(tokens, [[5, 6, 7, 8], [0, 5, 6, 1], [0, 0, 0, 0]])
  np.testing.assert_array_equal(pad, [0, 1, 3])
  np.testing.assert_array_equal(usable, [True, True, False])
  new = jnp.array([[10, 11, 12, 13], [10, eos, eos, eos], [eos, eos, eos, eos]])
  rows = on_policy.rows(tokens, pad, usable, new, eos, seq_len)
  np.testing.assert_array_equal(rows['inputs'][0], [5, 6, 7, 8, 10, 11, 12, 0, 0, 0])
  np.testing.assert_array_equal(rows['targets'][0], [6, 7, 8, 10, 11, 12, 13, 0, 0, 0])
  np.testing.assert_array_equal(rows['loss_weights'], [[0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
                                                      [0, 0, 0, 1, 1, 0, 0, 0, 0, 0],
                                                      [0] * 10])
  np.testing.assert_array_equal(rows['positions'][1], [0, 0, 1, 2, 3, 4, 5, 0, 0, 0])
  np.testing.assert_array_equal(rows['segment_ids'][1], [0, 1, 1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(rows[losses.ON_POLICY], np.ones((3, seq_len)))


def _tiny_model():
  cfg = load_experiment('lm_tiny').model
  return cfg, transformer.init_params(cfg, jax.random.key(0))


def test_samples_are_the_samplers_greedy_output():
  """At temperature 0 the rows' samples are Sampler.generate's greedy continuations of the
  same prompts (of different lengths), on a Gemma-3-shaped student whose 4-key windows the
  prompts and samples go past; and a key gives the same draws every time."""
  from test_sampler import placed
  cfg, params, mesh = placed('gemma3-local-global', False)
  op = config_lib.base_config().loss.on_policy
  op.prompt_len, op.new_tokens, op.temperature = 8, 6, 0.0
  rng = np.random.default_rng(1)
  inputs = rng.integers(3, cfg.vocab_size, size=(4, 16))
  segments = np.ones((4, 16), np.int32)
  segments[1, 5:], segments[2, 2:] = 2, 2  # first documents of 5 and 2 tokens
  batch = {'inputs': jnp.asarray(inputs), 'segment_ids': jnp.asarray(segments)}
  rows = jax.jit(lambda p, b: on_policy.sampled_rows(cfg, op, -1, 16, p, b,
                                                     jax.random.key(0)))(params, batch)
  prompts = [inputs[0, :8].tolist(), inputs[1, :5].tolist(), inputs[2, :2].tolist(),
             inputs[3, :8].tolist()]
  greedy = sampler_lib.Sampler(cfg, params, -1, mesh).generate(
      prompts, sampler_lib.Sampling(max_new_tokens=6))
  np.testing.assert_array_equal(np.asarray(rows['targets'][:, 7:13]), np.array(greedy))

  op.temperature = 1.0
  draw = jax.jit(lambda p, b, k: on_policy.sampled_rows(cfg, op, -1, 16, p, b, k)['targets'])
  first, again = (draw(params, batch, jax.random.key(5)) for _ in range(2))
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, draw(params, batch, jax.random.key(6)))


def test_no_gradient_reaches_the_sampler():
  """The loss differentiated through sample-then-score equals the loss of the same rows
  held fixed: whatever produced the samples contributes nothing to the gradient."""
  cfg, params = _tiny_model()
  op = config_lib.base_config().loss.on_policy
  op.prompt_len, op.new_tokens = 4, 4
  teacher = transformer.init_params(cfg, jax.random.key(1))
  rng = np.random.default_rng(2)
  batch = {'inputs': jnp.asarray(rng.integers(3, cfg.vocab_size, size=(2, 8))),
           'segment_ids': jnp.ones((2, 8), jnp.int32)}
  key = jax.random.key(3)

  def loss_of(p, rows):
    tokens = (rows['inputs'], rows['positions'], rows['segment_ids'])
    zs = transformer.bind(cfg, p)(*tokens)
    zt = transformer.bind(cfg, teacher)(*tokens)
    return losses.on_policy_sums(zs, zt, rows['targets'], rows['loss_weights'],
                                 'reverse_kl', 0.5)['on_policy_loss']

  sample = lambda p: on_policy.sampled_rows(cfg, op, -1, 8, p, batch, key)
  through = jax.jit(jax.grad(lambda p: loss_of(p, sample(p))))(params)
  held = jax.jit(jax.grad(lambda p, rows: loss_of(p, rows)))(params, jax.jit(sample)(params))
  for a, b in zip(jax.tree.leaves(through), jax.tree.leaves(held)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(held))


@pytest.mark.parametrize('overrides,expected', [
    ({'loss.on_policy.fraction': 1.5}, 'loss.on_policy.fraction=1.5 must be in [0, 1]'),
    ({'loss.on_policy.fraction': -0.1}, 'loss.on_policy.fraction=-0.1 must be in [0, 1]'),
    ({'loss.on_policy.fraction': 0.5, 'loss.on_policy.prompt_len': 40,
      'loss.on_policy.new_tokens': 40}, 'prompt_len + new_tokens = 80 exceeds data.seq_len=64'),
    ({'loss.on_policy.fraction': 0.5, 'loss.on_policy.prompt_len': 8},
     'needs prompt_len > 0 and new_tokens > 0'),
    ({'loss.on_policy.fraction': 0.5, 'loss.on_policy.prompt_len': 8,
      'loss.on_policy.new_tokens': 8, 'loss.kd.value': 0.0}, 'set loss.kd.value > 0'),
    ({'loss.on_policy.new_tokens': 8, 'loss.on_policy.prompt_len': 8,
      'loss.on_policy.kind': 'tv'}, "loss.on_policy.kind='tv' must be one of"),
    ({'loss.on_policy.fraction': 0.5, 'loss.on_policy.start_step': 100,
      'train.steps': 100}, 'start_step=100 is not below train.steps=100'),
])
def test_refusals(overrides, expected, tmp_path):
  """One line each, before a teacher is trained or the workdir made (exit 2 from the
  command: test_cli's seq_len case)."""
  config = sweep.apply_overrides(load_experiment('guide_tiny'), overrides)
  assert config.data.seq_len == 64
  with pytest.raises(config_lib.ConfigError) as error:
    trainer.train(config, tmp_path / 'run')
  assert expected in str(error.value) and '\n' not in str(error.value)
  assert not (tmp_path / 'run').exists()


def _distill(tmp_path, teacher=None):
  c = load_experiment('guide_tiny')
  for cfg in (c, c.teacher.pretrain):
    cfg.train.progress_bar = False
    cfg.train.async_checkpoints = False
    cfg.train.peak_flops = 1e11
  c.train.steps, c.train.warmup_steps, c.train.log_every = 4, 1, 1
  c.train.eval_every = c.train.checkpoint_every = 2
  c.teacher.pretrain.train.steps = 6
  if teacher:
    c.teacher.pretrain = type(c.teacher.pretrain)()
    c.teacher.checkpoint = str(teacher)
  return c


@pytest.mark.slow
def test_fraction_zero_is_kd_bitwise_and_resume_is_exact(tmp_path):
  """(1) loss.on_policy set up (prompt, tokens, evaluation) with fraction 0 trains exactly
  what KD does; (2) half the rows on-policy: a run preempted at step 2 and resumed ends
  bitwise where the uninterrupted run does (the samples are a function of (seed, step))."""
  kd = trainer.train(_distill(tmp_path), tmp_path / 'kd')
  teacher = tmp_path / 'kd' / 'teacher'
  zero = _distill(tmp_path, teacher)
  zero.loss.on_policy.prompt_len = zero.loss.on_policy.new_tokens = 16
  zero.loss.on_policy.eval_batches = 1
  zero_out = trainer.train(zero, tmp_path / 'zero')
  assert train_losses(tmp_path / 'zero') == train_losses(tmp_path / 'kd')
  for a, b in zip(jax.tree.leaves(kd['params']), jax.tree.leaves(zero_out['params'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert 'eval/on_policy_kl' in zero_out and 'eval/on_policy_kl' not in kd
  assert zero_out['eval/sample_teacher_nll'] > 0
  # guide_jax.evaluate's own-data scores: the trainer's prompts, key and teacher
  loaded = sampler_lib.load(str(tmp_path / 'zero'))
  scores = own_data.evaluate_run(tmp_path / 'zero', loaded)
  for key in ('eval/on_policy_kl', 'eval/sample_teacher_nll', 'eval/loss'):
    assert scores[key] == pytest.approx(zero_out[key], rel=1e-4), key

  mixed = zero.copy_and_resolve_references()
  mixed.loss.on_policy.fraction = 0.5
  whole = trainer.train(mixed, tmp_path / 'whole')
  records = read_metrics(tmp_path / 'whole')
  assert all('train/on_policy_kl' in r for r in records if 'train/loss' in r)
  assert any('perf/sample_time_s' in r for r in records)
  assert train_losses(tmp_path / 'whole') != train_losses(tmp_path / 'zero')
  assert trainer.train(mixed, tmp_path / 'cut', interrupt_at_step=2)['interrupted']
  resumed = trainer.train(mixed, tmp_path / 'cut')
  assert train_losses(tmp_path / 'cut') == train_losses(tmp_path / 'whole')
  for a, b in zip(jax.tree.leaves(whole['params']), jax.tree.leaves(resumed['params'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert resumed['eval/on_policy_kl'] == whole['eval/on_policy_kl']
  # loss.on_policy.start_step: KD on data (bitwise) until it, the student's rows after
  late = mixed.copy_and_resolve_references()
  late.loss.on_policy.start_step = 2
  trainer.train(late, tmp_path / 'late')
  late_losses, zero_losses = train_losses(tmp_path / 'late'), train_losses(tmp_path / 'zero')
  assert [late_losses[s] for s in (1, 2)] == [zero_losses[s] for s in (1, 2)]
  assert late_losses[3] != zero_losses[3]
  late_records = [r for r in read_metrics(tmp_path / 'late') if 'train/loss' in r]
  assert ['train/on_policy_kl' in r for r in late_records] == [False, False, True, True]


@pytest.mark.slow
def test_sharded_meshes_and_accumulation_follow_data_parallel(tmp_path):
  """Half the rows on-policy (greedy, so the samples are the same wherever the argmax is):
  a 2x2x2 mesh (FSDP and tensor-parallel student, teacher and KV cache) and a tensor-4
  mesh with 2 micro-batches train what the data-parallel run does, to 1e-5."""
  runs = {}
  for name, (mesh, accum) in {'dp': ((8, 1, 1), 1), 'fsdp_tp': ((2, 2, 2), 1),
                              'tp_accum': ((2, 1, 4), 2)}.items():
    c = _distill(tmp_path, tmp_path / 'dp' / 'teacher' if name != 'dp' else None)
    c.train.steps = 3
    op = c.loss.on_policy
    op.fraction, op.prompt_len, op.new_tokens, op.temperature, op.eval_batches = (
        0.5, 16, 16, 0.0, 1)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    c.train.grad_accum = accum
    out = trainer.train(c, tmp_path / name)
    runs[name] = (train_losses(tmp_path / name), out['eval/on_policy_kl'])
  for name in ('fsdp_tp', 'tp_accum'):
    for step, loss in runs['dp'][0].items():
      assert runs[name][0][step] == pytest.approx(loss, rel=1e-5), (name, step)
    assert runs[name][1] == pytest.approx(runs['dp'][1], rel=1e-5), name
