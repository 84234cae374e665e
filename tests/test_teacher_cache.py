"""The offline teacher-logits cache: sparse KD, the cache's bytes, and runs trained from it."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from guide_jax import losses, sharding, teacher_logits
from guide_jax.train import steps, teacher_cache, trainer

from conftest import REPO, load_experiment, read_metrics, train_losses
from test_fused_loss import _loss, _value_and_grad, setup  # noqa: F401  (a fixture)


def _fields(z, targets, k, temperature):
  return jax.device_get(teacher_cache.cached_fields(jnp.asarray(z), jnp.asarray(targets), k,
                                                    temperature))


# --- the sparse KD loss ------------------------------------------------------------------


@pytest.mark.parametrize('kind', losses.KD_KINDS)
@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_sparse_kd_with_k_equal_vocabulary_is_dense_kd(kind, temperature):
  rng = np.random.default_rng(0)
  s, t = (rng.normal(size=(3, 5, 37)).astype(np.float32) * 3 for _ in range(2))
  cached = _fields(t, np.zeros((3, 5), np.int32), 37, temperature)
  dense = lambda x: losses.kd_per_token(x, t, temperature, kind, 0.3)
  sparse = lambda x: losses.sparse_kd_per_token(x, cached, temperature, kind, 0.3)
  np.testing.assert_allclose(sparse(s), dense(s), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda x: sparse(x).sum())(s),
                             jax.grad(lambda x: dense(x).sum())(s), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('temperature', [1.0, 2.0])
def test_sparse_kd_is_the_kl_of_top_k_plus_a_rest_bucket(temperature):
  """A hand computation in float64: the teacher's mass outside its top-k is exact (not
  renormalised away), and the loss is a lower bound of full KD (log-sum inequality)."""
  rng = np.random.default_rng(1)
  s, t = rng.normal(size=(2, 11)) * 2, rng.normal(size=(2, 11)) * 2
  k = 4
  cached = _fields(t.astype(np.float32), np.array([3, 7]), k, temperature)
  got = losses.sparse_kd_per_token(s.astype(np.float32), cached, temperature)

  def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  for i in range(2):
    top = np.argsort(-t[i])[:k]
    rest = np.setdiff1d(np.arange(11), top)
    p, q = softmax(t[i] / temperature), softmax(s[i] / temperature)
    p_b = np.append(p[top], p[rest].sum())
    q_b = np.append(q[top], q[rest].sum())
    want = temperature ** 2 * np.sum(p_b * np.log(p_b / q_b))
    full = temperature ** 2 * np.sum(p * np.log(p / q))
    np.testing.assert_allclose(got[i], want, rtol=1e-5)
    assert got[i] <= full + 1e-6
    np.testing.assert_array_equal(cached['teacher_ids'][i], top)
    # The stored values: logits relative to the top-1, CE of the target exact off the top-k.
    np.testing.assert_allclose(cached['teacher_lse'][i] - cached['teacher_target_logit'][i],
                               -np.log(softmax(t[i])[[3, 7][i]]), rtol=1e-5)


@pytest.mark.parametrize('kind,temperature,chunk', [
    ('forward_kl', 2.5, 8), pytest.param('jsd', 1.0, 0, marks=pytest.mark.slow)])
def test_cached_objective_at_k_equal_vocabulary_equals_online(setup, kind, temperature,
                                                              chunk):
  """Loss, every metric and the gradients of the cached objective (fused or not) equal
  online KD when k is the whole vocabulary."""
  student, teacher, sp, tp, batch, mesh, rules = setup
  loss = _loss(kind, temperature)
  with jax.set_mesh(mesh), sharding.use_rules(rules):
    fields = jax.jit(teacher_cache.top_k_fn(teacher, teacher.vocab_size, temperature, 0))(
        tp, batch)
  online = steps.distill_objective(student, teacher, loss, np.array([0]), chunk)
  cached = steps.distill_objective(student, None, loss, np.array([0]), chunk)
  (l0, s0), g0 = _value_and_grad(online, sp, batch, tp, {}, mesh=mesh, rules=rules)
  (l1, s1), g1 = _value_and_grad(cached, sp, {**batch, **fields}, {}, {}, mesh=mesh,
                                 rules=rules)
  assert set(s0) == set(s1) and float(s0['kd']) > 0.1
  np.testing.assert_allclose(l1, l0, rtol=1e-5)
  for name in s0:
    np.testing.assert_allclose(s1[name], s0[name], rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g1, g0)


def test_layout_round_trips_and_sizes():
  layout = teacher_cache.Layout(seq_len=4, top_k=3, vocab_size=1000, dtype='float32')
  assert layout.bytes_per_token == 3 * (4 + 2) + 12  # f32 logits, u16 ids, 3 f32 values
  assert teacher_cache.Layout(4, 3, 70_000, 'bfloat16').bytes_per_token == 3 * (2 + 4) + 12
  rng = np.random.default_rng(0)
  arrays = {'teacher_logits': rng.normal(size=(2, 4, 3)).astype(np.float32),
            'teacher_ids': rng.integers(0, 1000, (2, 4, 3)),
            **{f: rng.normal(size=(2, 4)).astype(np.float32)
               for f in teacher_cache.FLOAT_FIELDS}}
  data = layout.encode(arrays, 0) + layout.encode(arrays, 1)
  back = layout.decode(data, 2)
  for name, value in arrays.items():
    np.testing.assert_array_equal(back[name], value)


# --- building a cache and training from it --------------------------------------------------


def _student(teacher_dir, steps=8):
  c = load_experiment('guide_tiny')
  c.teacher.pretrain = type(c.teacher.pretrain)()
  c.teacher.checkpoint = str(teacher_dir)
  c.train.update(dict(steps=steps, eval_every=4, checkpoint_every=4, progress_bar=False,
                      async_checkpoints=False, peak_flops=1e11, warmup_steps=2))
  c.guide.init = 'none'  # the kd arm: the teacher's params are never loaded
  return c


@pytest.fixture(scope='module')
def built(tmp_path_factory, monkeypatch_module):
  """A trained tiny teacher and a complete cache of 8 student steps (2 steps a file)."""
  root = tmp_path_factory.mktemp('cache')
  t = load_experiment('lm_tiny')
  t.train.update(dict(steps=12, progress_bar=False, async_checkpoints=False,
                      peak_flops=1e11))
  trainer.train(t, root / 'teacher')
  monkeypatch_module.setattr(teacher_cache, 'FILE_BYTES', 1)  # one step a file
  cfg = _student(root / 'teacher')
  result = teacher_logits.build(cfg, str(root / 'k16'), top_k=16, log=lambda *_: None)
  return root, cfg, result


@pytest.fixture(scope='module')
def monkeypatch_module():
  mp = pytest.MonkeyPatch()
  yield mp
  mp.undo()


def _files(directory):
  out = {}
  for dirpath, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(dirpath, name)
      out[os.path.relpath(path, directory)] = open(path, 'rb').read()
  return out


def test_killed_build_resumes_to_the_same_bytes(built):
  root, cfg, result = built
  assert result.steps_built == 8 and result.manifest['steps_per_file'] == 1
  assert result.manifest['teacher_eval']['eval_loss'] > 0
  out = root / 'resumed'
  part = teacher_logits.build(cfg, str(out), top_k=16, stop_after_blocks=3,
                             log=lambda *_: None)
  assert part.interrupted and part.steps_built == 3
  (out / 'rows' / '000000' / '.000003.bin.tmp').write_bytes(b'half a write')  # killed here
  rest = teacher_logits.build(cfg, str(out), top_k=16, log=lambda *_: None)
  assert rest.steps_built == 5
  assert not (out / 'rows' / '000000' / '.000003.bin.tmp').exists()  # rewritten, renamed
  assert _files(out) == _files(root / 'k16')
  assert teacher_logits.build(cfg, str(out), top_k=16, log=lambda *_: None).steps_built == 0


def test_cached_run_resumed_mid_run_equals_uninterrupted(built, tmp_path):
  """The kd arm from the cache never loads the teacher, logs the teacher's eval loss
  measured when the cache was built, and keeps the train metrics' names."""
  root, cfg, _ = built
  cfg = cfg.copy_and_resolve_references()
  cfg.teacher.logits_dir = str(root / 'k16')
  cfg.train.update(dict(steps=4, eval_every=4, checkpoint_every=2, log_every=2))
  whole = trainer.train(cfg, tmp_path / 'whole')
  assert whole['teacher_params'] is None and 'guide/explained_variance' not in whole
  first = trainer.train(cfg, tmp_path / 'resumed', interrupt_at_step=2)
  assert first['interrupted'] and first['step'] == 2
  again = trainer.train(cfg, tmp_path / 'resumed')
  assert again['step'] == 4
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               again['params'], whole['params'])
  assert all(k in whole for k in ('eval/kd', 'eval/teacher_ce', 'eval/agreement'))
  assert whole['eval/teacher_ce'] == pytest.approx(whole['teacher/eval_loss'], rel=1e-5)
  records = read_metrics(tmp_path / 'whole')
  train = [r for r in records if 'train/kd' in r]
  assert train and all(k in train[-1] for k in ('train/teacher_ce', 'train/agreement'))
  assert next(r for r in records if 'teacher/eval_loss' in r)['teacher/eval_loss'] == \
      pytest.approx(built[2].manifest['teacher_eval']['eval_loss'], rel=1e-5)


@pytest.mark.slow  # ~30 s; the objective's equality at k = V is tested in the default run
def test_cache_at_full_vocabulary_trains_like_online_kd(built, tmp_path):
  """A GUIDE+KD run from a k = V cache (its teacher loaded for the projection, then
  freed) follows the online run's losses."""
  root, cfg, _ = built
  cfg = cfg.copy_and_resolve_references()
  cfg.guide.init = 'blocks'
  cfg.train.steps = 4
  full = teacher_logits.build(cfg, str(tmp_path / 'full'), top_k=cfg.model.vocab_size,
                             log=lambda *_: None)
  assert full.manifest['top_k'] == 512
  online = trainer.train(cfg, tmp_path / 'online')
  cfg.teacher.logits_dir = str(tmp_path / 'full')
  cached = trainer.train(cfg, tmp_path / 'cached')
  assert cached['teacher_params'] is None and online['teacher_params'] is not None
  assert cached['guide/explained_variance'] == online['guide/explained_variance']
  assert cached['teacher/eval_loss'] == pytest.approx(online['teacher/eval_loss'], rel=1e-5)
  want, got = train_losses(tmp_path / 'online'), train_losses(tmp_path / 'cached')
  assert sorted(got) == sorted(want)
  for step in want:
    assert got[step] == pytest.approx(want[step], rel=1e-4)
  for key in ('eval/loss', 'eval/kd', 'eval/teacher_ce', 'eval/agreement'):
    assert cached[key] == pytest.approx(online[key], rel=1e-4), key


@pytest.mark.parametrize('field,value,message', [
    ('data.seed', 5, 'data.seed=5 but teacher.logits_dir='),
    ('data.seq_len', 32, 'data.seq_len=32'),
    ('train.steps', 9, 'extend it with --steps=9'),
    ('loss.temperature', 2.0, 'exact only at the temperature'),
])
def test_a_cache_for_another_run_is_refused(built, tmp_path, field, value, message):
  root, cfg, _ = built
  cfg = cfg.copy_and_resolve_references()
  cfg.teacher.logits_dir = str(root / 'k16')
  section, name = field.split('.')
  cfg[section][name] = value
  if field == 'data.seq_len':
    cfg.model.max_len = 64
  with pytest.raises(teacher_cache.CacheError, match=message):
    trainer.train(cfg, tmp_path)
  assert not (tmp_path / 'checkpoints').exists()


def test_missing_truncated_and_other_teacher_caches_are_refused(built, tmp_path):
  root, cfg, _ = built
  cfg = cfg.copy_and_resolve_references()
  broken = tmp_path / 'broken'
  shutil.copytree(root / 'k16', broken)
  cfg.teacher.logits_dir = str(broken)
  block = broken / 'rows' / '000005' / '000006.bin'
  block.write_bytes(block.read_bytes()[:-10])
  with pytest.raises(teacher_cache.CacheError, match='is damaged: .*000006.bin has'):
    trainer.train(cfg, tmp_path / 'run')
  os.remove(block)
  with pytest.raises(teacher_cache.CacheError, match='is incomplete: .*000006.bin is missing'):
    trainer.train(cfg, tmp_path / 'run')
  cfg.teacher.logits_dir = str(tmp_path / 'nowhere')
  with pytest.raises(teacher_cache.CacheError, match='holds no manifest.json'):
    trainer.train(cfg, tmp_path / 'run')
  assert not (tmp_path / 'run' / 'checkpoints').exists()


@pytest.mark.slow  # trains a second teacher
def test_a_cache_of_another_teacher_is_refused(built, tmp_path):
  """Same architecture, other weights: refused by name in the kd arm, by the parameters'
  norms when GUIDE loads the teacher."""
  root, cfg, _ = built
  cfg = cfg.copy_and_resolve_references()
  other = load_experiment('lm_tiny')
  other.train.update(dict(steps=4, progress_bar=False, async_checkpoints=False,
                          peak_flops=1e11, warmup_steps=1))
  trainer.train(other, tmp_path / 'other_teacher')
  cfg.teacher.logits_dir = str(root / 'k16')
  cfg.teacher.checkpoint = str(tmp_path / 'other_teacher')
  with pytest.raises(teacher_cache.CacheError, match='the cache stands for its teacher'):
    trainer.train(cfg, tmp_path / 'run')  # the kd arm: only the teacher's name to compare
  cfg.guide.init = 'embeddings'
  with pytest.raises(teacher_cache.CacheError, match='its parameters differ'):
    trainer.train(cfg, tmp_path / 'run')
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def _cli(tmp_path, root, *extra):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  args = [sys.executable, '-m', 'guide_jax.teacher_logits', '--config=experiments/guide_tiny.py',
          f'--config.teacher.checkpoint={root / "teacher"}', '--config.train.steps=8',
          '--config.train.progress_bar=False', '--config.train.warmup_steps=2',
          f'--out={tmp_path / "cache"}', *extra]
  return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_cli_refuses_k_beyond_the_vocabulary(built, tmp_path):
  bad = _cli(tmp_path, built[0], '--top_k=513')
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
      'error: --top_k=513 must be in [1, the vocabulary size 512]']
  assert not (tmp_path / 'cache').exists()


@pytest.mark.slow  # a subprocess build; test_two_processes_... checks the bytes too
def test_cli_on_one_device_writes_the_records_of_eight(built, tmp_path):
  root = built[0]
  good = _cli(tmp_path, root, '--top_k=16', '--steps=2')
  assert good.returncode == 0, good.stderr[-3000:]
  line = json.loads(good.stdout.strip().splitlines()[-1])
  assert line['steps'] == 2 and line['top_k'] == 16 and line['bytes_per_token'] == 16 * 6 + 12
  # The same two steps as the in-process build (8 devices and one step a file there; 1
  # device and one file here): the same records.
  for row in range(8):
    records = b''.join((root / 'k16' / 'rows' / f'{row:06d}' / f'{b:06d}.bin').read_bytes()
                       for b in range(2))
    assert (tmp_path / 'cache' / 'rows' / f'{row:06d}' / '000000.bin').read_bytes() == records


@pytest.mark.slow  # three subprocess builds
def test_two_processes_write_the_cache_of_one(built, tmp_path):
  """Each of 2 processes (2 devices each) writes its own rows; together the bytes of one
  process with 4 devices, and of the in-process build on 8."""
  from test_multiprocess import _free_port
  root = built[0]
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  worker = os.path.join(REPO, 'tests', 'mp_cache_worker.py')

  def run(nproc, devices, out):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, worker, str(pid), str(nproc), str(port),
                               str(devices), str(root / 'teacher'), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in range(nproc)]
    for p in procs:
      log, _ = p.communicate(timeout=600)
      assert p.returncode == 0, log[-3000:]

  run(1, 4, tmp_path / 'one')
  run(2, 2, tmp_path / 'two')
  rows = lambda d: {k: v for k, v in _files(d).items() if k.startswith('rows')}
  one = rows(tmp_path / 'one')
  assert len(one) == 8 * 8 and one == rows(tmp_path / 'two') == rows(root / 'k16')
  # The manifests agree but for the eval loss's float summation order over processes.
  m1, m2 = (json.loads((tmp_path / d / 'manifest.json').read_text()) for d in ('one', 'two'))
  e1, e2 = m1.pop('teacher_eval'), m2.pop('teacher_eval')
  assert e1['eval_loss'] == pytest.approx(e2['eval_loss'], rel=1e-6)
  n1, n2 = m1['teacher'].pop('param_norms'), m2['teacher'].pop('param_norms')
  assert m1 == m2 and n1 == pytest.approx(n2, rel=1e-6)
