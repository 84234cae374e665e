"""Cluster launchers: the exact commands they would run."""

import importlib.util
import os
import subprocess
import sys

from conftest import REPO


def _launcher(name):
  spec = importlib.util.spec_from_file_location(name, f'{REPO}/launch/{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _tpu_vm():
  return _launcher('tpu_vm')


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
  from guide_jax import experiment_file, sweep
  tpu_vm = _tpu_vm()
  cmds = tpu_vm.commands('s', 'z', 'v5litepod-16', 'experiments/study_cpu.py', 'gs://b/st',
                         sweep='main')
  train = [c[-1] for c in cmds if c[4] == 'ssh'][1:]
  module = experiment_file.load_module(f'{REPO}/experiments/study_cpu.py')
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


def _gke():
  return _launcher('gke')


def test_gke_dry_run_prints_a_jobset_of_one_job_per_slice():
  """The printed YAML parses into one JobSet: 2 replicas (slices) of a job with a pod per
  host of a v5p:4x4x2 slice (32 chips, 8 hosts of 4), the image, the trainer's command."""
  import yaml
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run(
      [sys.executable, 'launch/gke.py', '--name=Guide_1B', '--tpu=v5p:4x4x2', '--num_slices=2',
       '--image=us-docker.pkg.dev/p/r/guide_jax:1', '--config=experiments/guide_1b.py',
       '--workdir=gs://b/guide_1b', '--override=--config.mesh.dcn_data=2', '--dry_run'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  docs = list(yaml.safe_load_all(out.stdout))
  assert len(docs) == 1
  js = docs[0]
  assert js['kind'] == 'JobSet' and js['metadata']['name'] == 'guide-1b'
  assert js['metadata']['annotations'] == {
      'alpha.jobset.sigs.k8s.io/exclusive-topology': 'cloud.google.com/gke-nodepool'}
  assert js['spec']['failurePolicy'] == {'maxRestarts': 4}
  (job,) = js['spec']['replicatedJobs']
  assert job['replicas'] == 2
  spec = job['template']['spec']
  assert spec['parallelism'] == spec['completions'] == 8 and spec['backoffLimit'] == 0
  pod = spec['template']['spec']
  assert pod['restartPolicy'] == 'Never' and pod['nodeSelector'] == {
      'cloud.google.com/gke-tpu-accelerator': 'tpu-v5p-slice',
      'cloud.google.com/gke-tpu-topology': '4x4x2'}
  (container,) = pod['containers']
  assert container['image'] == 'us-docker.pkg.dev/p/r/guide_jax:1'
  assert container['resources'] == {'limits': {'google.com/tpu': 4}}
  assert container['command'] == [
      'bash', '-c', 'python -m guide_jax.main --config=experiments/guide_1b.py '
      '--config.mesh.dcn_data=2 --workdir=gs://b/guide_1b']


def test_gke_sweep_is_a_jobset_per_run_and_bad_tpu_is_one_line():
  gke = _gke()
  docs = gke.manifests('study', 'v5e:2x4', 1, 'img', 'experiments/study_cpu.py', 'gs://b/s',
                       sweep='main')
  from guide_jax import experiment_file
  from guide_jax import sweep as sweep_lib
  module = experiment_file.load_module(f'{REPO}/experiments/study_cpu.py')
  runs = sweep_lib.runs(module.get_config(), module.get_sweep('main'), 'gs://b/s')
  assert [d['metadata']['name'] for d in docs] == [
      gke.k8s_name(f'study-{r.name}') for r in runs]
  assert docs[0]['metadata']['name'] == 'study-baseline-seed0'
  assert all(len(d['metadata']['name']) <= 40 for d in docs)
  first = docs[0]['spec']['replicatedJobs'][0]['template']['spec']
  assert first['parallelism'] == 1  # v5e 2x4: one host with 8 chips
  command = first['template']['spec']['containers'][0]['command'][2]
  assert command.endswith(' '.join(runs[0].flags()))
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  bad = subprocess.run([sys.executable, 'launch/gke.py', '--name=x', '--tpu=h100:8',
                        '--image=i', '--config=experiments/guide_1b.py', '--workdir=gs://b',
                        '--dry_run'], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith('error: ')


def test_gke_dry_run_of_the_70b_teacher_on_two_slices_with_a_local_tier():
  """experiments/guide_70b_8b.py as its docstring compiles it: 2 slices of v5p:4x4x4 (16
  hosts of 4 chips each), data parallel across them, and a local checkpoint tier on each
  node's RAM disk."""
  import yaml
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  out = subprocess.run(
      [sys.executable, 'launch/gke.py', '--name=guide-70b-8b', '--tpu=v5p:4x4x4',
       '--num_slices=2', '--image=us-docker.pkg.dev/p/r/guide_jax:1',
       '--config=experiments/guide_70b_8b.py', '--workdir=gs://b/70b_8b',
       '--override=--config.mesh.dcn_data=2',
       '--override=--config.teacher.checkpoint=gs://b/Llama-3.1-70B',
       '--override=--config.data.train_files=gs://b/corpus/*.jsonl.zst',
       '--local_checkpoint_dir=/local', '--local_checkpoint_every=50', '--dry_run'],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  (js,) = yaml.safe_load_all(out.stdout)
  (job,) = js['spec']['replicatedJobs']
  assert job['replicas'] == 2
  spec = job['template']['spec']
  assert spec['parallelism'] == spec['completions'] == 16
  pod = spec['template']['spec']
  assert pod['nodeSelector']['cloud.google.com/gke-tpu-topology'] == '4x4x4'
  assert pod['volumes'] == [{'name': 'local-checkpoints', 'hostPath': {
      'path': '/dev/shm/guide_jax/guide-70b-8b', 'type': 'DirectoryOrCreate'}}]
  (container,) = pod['containers']
  assert container['volumeMounts'] == [{'name': 'local-checkpoints', 'mountPath': '/local'}]
  assert container['resources'] == {'limits': {'google.com/tpu': 4}}
  assert container['command'][2] == (
      "python -m guide_jax.main --config=experiments/guide_70b_8b.py "
      "--config.mesh.dcn_data=2 --config.teacher.checkpoint=gs://b/Llama-3.1-70B "
      "'--config.data.train_files=gs://b/corpus/*.jsonl.zst' "
      "--config.train.local_checkpoint_dir=/local --config.train.local_checkpoint_every=50 "
      "--workdir=gs://b/70b_8b")
  half = subprocess.run(
      [sys.executable, 'launch/gke.py', '--name=x', '--tpu=v5p:4x4x4', '--image=i',
       '--config=experiments/guide_70b_8b.py', '--workdir=gs://b', '--local_checkpoint_dir=/l',
       '--dry_run'], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert half.returncode == 2 and 'give both' in half.stderr.strip().splitlines()[-1]
