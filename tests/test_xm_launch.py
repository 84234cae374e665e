"""launch/xm_launch.py, run as users run it: from its own environment (.venv-xm, built by
`make xm-venv`, which `make test` does first), with the local executor for real and the
cloud executors built but not launched (--dry_run)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from guide_jax.data import tokenizer

from conftest import read_metrics

REPO = pathlib.Path(__file__).resolve().parent.parent
XM_PYTHON = pathlib.Path(os.environ.get('GUIDE_JAX_XM_PYTHON',
                                        REPO / '.venv-xm' / 'bin' / 'python'))

pytestmark = pytest.mark.skipif(not XM_PYTHON.is_file(),
                                reason=f'no XManager environment at {XM_PYTHON}; make xm-venv')


def launch(tmp_path, *args):
  env = dict(os.environ, HOME=str(tmp_path / 'home'),  # XManager's sqlite experiment DB
             GUIDE_JAX_CACHE=str(tokenizer.default_cache_dir()))  # share the tokenizer
  env.pop('XLA_FLAGS', None)  # each job is a plain single-device run
  return subprocess.run([str(XM_PYTHON), 'launch/xm_launch.py', f'--python={sys.executable}',
                         *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=600)


def launch_seeds_locally(tmp_path, override):
  """lm_tiny's two-run `seeds` sweep on the local executor, into tmp_path/runs."""
  return launch(tmp_path, '--config=experiments/lm_tiny.py', '--sweep=seeds',
                f'--workdir={tmp_path / "runs"}', '--executor=local', f'--override={override}')


def test_local_executor_runs_a_two_run_sweep_and_waits(tmp_path):
  out = launch_seeds_locally(tmp_path, '--config.train.progress_bar=False')
  assert out.returncode == 0, out.stderr[-3000:]
  assert '2 work units' in out.stdout
  finals = {}
  for seed in (0, 1):
    workdir = tmp_path / 'runs' / f'seed{seed}'
    # Both finished before the launcher returned: final checkpoint and eval are there.
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['10', '20']
    assert json.loads((workdir / 'config.json').read_text())['train']['seed'] == seed
    finals[seed] = [r for r in read_metrics(workdir) if 'eval/loss' in r][-1]
    assert finals[seed]['step'] == 20
  assert finals[0]['eval/loss'] != finals[1]['eval/loss']  # the seed override reached the job


@pytest.mark.slow  # ~8 s; the two-run sweep above covers the local executor
def test_local_executor_reports_failed_runs(tmp_path):
  out = launch_seeds_locally(tmp_path, '--config.train.steps=0')
  assert out.returncode == 1, out.stderr[-3000:]
  assert 'error: 2 of 2 runs failed: seed0, seed1' in out.stderr


def test_dry_run_builds_cloud_executors_from_flags(tmp_path):
  out = launch(tmp_path, '--config=experiments/lm_tiny.py', '--sweep=seeds',
               '--workdir=gs://bucket/seeds', '--executor=kubernetes',
               '--accelerator=tpu_v5p=4x4x2', '--dry_run')
  assert out.returncode == 0, out.stderr[-3000:]
  jobs = [json.loads(line) for line in out.stdout.splitlines()]
  assert [job['name'] for job in jobs] == ['seed0', 'seed1']
  assert jobs[1]['command'] == ['python', '-m', 'guide_jax.main',
                                '--config=experiments/lm_tiny.py', '--config.train.seed=1',
                                '--workdir=gs://bucket/seeds/seed1']
  assert "tpu_v5p=xm.Topology('4x4x2')" in jobs[0]['executor']
  assert "tpu_runtime_version='tpu-ubuntu2204-base'" in jobs[0]['executor']

  out = launch(tmp_path, '--config=experiments/lm_tiny.py', '--workdir=gs://bucket/one',
               '--executor=vertex', '--accelerator=a100=8', '--cpu=12', '--dry_run')
  assert out.returncode == 0, out.stderr[-3000:]
  [job] = [json.loads(line) for line in out.stdout.splitlines()]
  assert job['name'] == 'lm_tiny'
  assert job['executor'].startswith('Vertex(requirements=xm.JobRequirements(a100=8')
  assert 'cpu=12' in job['executor']


@pytest.mark.parametrize('args, message', [  # one by default: the launcher's error path
    (['--sweep=nope'], "lm_tiny has no sweep 'nope'"),
    pytest.param(['--accelerator=tpu_v5p'], 'write RESOURCE=AMOUNT', marks=pytest.mark.slow),
    pytest.param(['--accelerator=b7=8'], "Unknown ResourceType 'b7'", marks=pytest.mark.slow),
    pytest.param(['--executor=vertex'], 'pass --image_tag=', marks=pytest.mark.slow),
])
def test_bad_launch_exits_2_with_one_line(tmp_path, args, message):
  out = launch(tmp_path, '--config=experiments/lm_tiny.py', '--workdir=gs://bucket/x', *args)
  assert out.returncode == 2
  [line] = [l for l in out.stderr.splitlines() if l.startswith('error:')]
  assert message in line


def test_cloud_images_install_the_accelerator_extra():
  from guide_jax import experiment_file
  xm_launch = experiment_file.load_module(REPO / 'launch' / 'xm_launch.py')  # absl only at import
  assert xm_launch.pip_extras('seqio', 'tpu_v5p=4x4x2') == 'seqio,tpu'
  assert xm_launch.pip_extras('seqio', 'a100=8') == 'seqio,gpu'
  assert xm_launch.pip_extras('', '') == ''
  assert xm_launch.pip_extras('tpu,seqio', 'tpu_v4=2x2x1') == 'tpu,seqio'
