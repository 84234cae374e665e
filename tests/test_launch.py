"""Cluster launchers: the exact commands they would run."""

import importlib.util
import os
import subprocess
import sys

from conftest import REPO


def _tpu_vm():
  spec = importlib.util.spec_from_file_location('tpu_vm', f'{REPO}/launch/tpu_vm.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_tpu_vm_commands_for_one_run():
  tpu_vm = _tpu_vm()
  cmds = tpu_vm.commands('g1', 'us-east5-a', 'v5p-64', 'experiments/guide_1b.py',
                         'gs://b/run', project='p', spot=True,
                         overrides=('--config.train.steps=10',))
  base = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  assert cmds == [
      ['git', '-C', REPO, 'archive', '--format=tar.gz', '--output=/tmp/guide_jax_src.tar.gz',
       'HEAD'],
      base + ['create', 'g1', '--zone=us-east5-a', '--project=p', '--accelerator-type=v5p-64',
              '--version=tpu-ubuntu2204-base', '--spot'],
      base + ['scp', 'g1', '--zone=us-east5-a', '--project=p', '--worker=all',
              '/tmp/guide_jax_src.tar.gz', 'g1:~/'],
      base + ['ssh', 'g1', '--zone=us-east5-a', '--project=p', '--worker=all',
              "--command=mkdir -p guide_jax_src && tar xzf ~/guide_jax_src.tar.gz -C "
              "guide_jax_src && cd guide_jax_src && pip install -q -e '.[tpu]'"],
      base + ['ssh', 'g1', '--zone=us-east5-a', '--project=p', '--worker=all',
              '--command=cd guide_jax_src && python3 -m guide_jax.main '
              '--config=experiments/guide_1b.py --config.train.steps=10 --workdir=gs://b/run'],
      base + ['delete', 'g1', '--zone=us-east5-a', '--project=p', '--quiet'],
  ]
  kept = tpu_vm.commands('g1', 'z', 'v4-8', 'experiments/guide_1b.py', 'gs://b/r', keep=True)
  assert kept[-1][4] == 'ssh'  # no delete


def test_tpu_vm_sweep_runs_every_entry_of_the_shared_sweep():
  from guide_jax import sweep
  tpu_vm = _tpu_vm()
  cmds = tpu_vm.commands('s', 'z', 'v5litepod-16', 'experiments/study_cpu.py', 'gs://b/st',
                         sweep='main')
  train = [c[-1] for c in cmds if c[4] == 'ssh'][1:]
  module = sweep.load_module(f'{REPO}/experiments/study_cpu.py')
  runs = sweep.runs(module.get_config(), module.get_sweep('main'), 'gs://b/st')
  assert len(train) == len(runs) == 18
  for command, run in zip(train, runs):
    assert command.endswith(' '.join(run.flags()))
  assert '--config.guide.init=none --config.loss.kd.value=0.0 --workdir=gs://b/st/baseline/seed0' \
      in train[0]


def test_tpu_vm_dry_run_prints_and_runs_nothing():
  out = subprocess.run([sys.executable, 'launch/tpu_vm.py', '--name=g', '--zone=z',
                        '--accelerator_type=v4-8', '--config=experiments/guide_1b.py',
                        '--workdir=gs://b/r', '--dry_run'], cwd=REPO, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, PATH='/usr/bin:/bin'))
  assert out.returncode == 0, out.stderr
  lines = out.stdout.strip().splitlines()
  assert lines[1] == ('gcloud compute tpus tpu-vm create g --zone=z --accelerator-type=v4-8 '
                      '--version=tpu-ubuntu2204-base')
  assert lines[-1] == 'gcloud compute tpus tpu-vm delete g --zone=z --quiet'
