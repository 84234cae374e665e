"""Workdirs on object stores (gs://): path handling, and metrics that never append.

No bucket is reachable from here, so gs:// is redirected into a temporary folder with
etils' own epath mock, which records every mode a file is opened in."""

import pytest
from etils import epath
from etils.epath import testing as epath_testing

from guide_jax import paths
from guide_jax.train import metrics as metrics_lib

from conftest import read_metrics


def test_workdir_path_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert str(paths.workdir_path('gs://bucket/run') / 'checkpoints') == \
      'gs://bucket/run/checkpoints'
  assert paths.workdir_path('runs/a') == epath.Path(tmp_path / 'runs' / 'a')
  assert paths.is_url('gs://bucket/run') and not paths.is_url(tmp_path)


class _NoTensorBoard:
  def __init__(self, logdir):
    self.logdir = logdir

  def add_scalar(self, *args):
    pass

  def close(self):
    pass


@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
  """gs://bucket/... lives in tmp_path; returns the list of open() modes used on it."""
  import tensorboardX
  from etils.epath import gpath
  monkeypatch.setattr(tensorboardX, 'SummaryWriter', _NoTensorBoard)
  # With TensorFlow installed (the seqio extra), epath sends gs:// to tf.io.gfile and
  # past its own mock; make it take the mocked backend, as it does without TensorFlow.
  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)
  modes = []

  def local(path):
    assert str(path).startswith('gs://bucket/'), path
    return str(path).replace('gs://bucket', str(tmp_path))

  def redirect(fn, path, *args, **kwargs):
    return fn(local(path), *args, **kwargs)

  def open_(fn, path, mode='r', *args, **kwargs):
    modes.append(mode)
    return fn(local(path), mode, *args, **kwargs)

  with epath_testing.mock_epath(open=open_, exists=redirect, isdir=redirect, mkdir=redirect,
                                makedirs=redirect, stat=redirect):
    yield modes


def test_metrics_on_a_bucket_are_rewritten_whole_and_survive_a_resume(tmp_path, fake_bucket):
  writer = metrics_lib.MetricsWriter('gs://bucket/run', 4, 0, progress_bar=False)
  writer.write(1, {'train/loss': 3.0})
  writer.write(2, {'train/loss': 2.5})
  writer.close()
  resumed = metrics_lib.MetricsWriter('gs://bucket/run', 4, 2, progress_bar=False)
  resumed.write(3, {'train/loss': 2.0})
  resumed.close()

  assert read_metrics(tmp_path / 'run') == [{'step': 1, 'train/loss': 3.0}, {'step': 2, 'train/loss': 2.5},
                     {'step': 3, 'train/loss': 2.0}]
  assert fake_bucket and not any('a' in mode for mode in fake_bucket)  # object stores can't


def test_local_metrics_append(tmp_path):
  for step in (1, 2):
    writer = metrics_lib.MetricsWriter(tmp_path, 4, step - 1, progress_bar=False)
    writer.write(step, {'train/loss': float(step)})
    writer.close()
  assert [r['step'] for r in read_metrics(tmp_path)] == [1, 2]
