"""Run guide_jax on GKE TPU node pools as a JobSet: one replicated job per slice, every
host of every slice running the same `python -m guide_jax.main`.

  python launch/gke.py --name=guide-1b --tpu=v5p:4x4x2 --num_slices=2 \
      --image=us-docker.pkg.dev/PROJECT/guide/guide_jax:latest \
      --config=experiments/guide_1b.py --workdir=gs://BUCKET/guide_1b \
      --override=--config.mesh.dcn_data=2 [--dry_run]

  # a sweep: one JobSet per run of get_sweep(NAME) (the same runs as guide_jax.study)
  python launch/gke.py ... --config=experiments/study_cpu.py --sweep=main --workdir=gs://B/s

The image is the repository's Dockerfile (the package with its `tpu` extra). GKE's TPU
provisioning sets the TPU_WORKER_* variables on every host, and, across the slices of a
JobSet, the MEGASCALE_* ones (as XPK relies on), so the trainer's
`distributed.initialize='auto'` calls a bare `jax.distributed.initialize()`. Set
`mesh.dcn_data` (or `mesh.dcn_fsdp`) so that the mesh spans the slices; `python -m
guide_jax.aot --num_slices=N` checks that the step fits first. A failed host fails its
slice's job (backoffLimit 0); the JobSet then restarts every job, up to --max_restarts
times, and the trainer resumes from its last checkpoint in --workdir.

--local_checkpoint_dir=DIR (with --local_checkpoint_every=N) adds the trainer's local
checkpoint tier: DIR in the container is the node's RAM disk, a hostPath under
/dev/shm/guide_jax/NAME, which outlives the pods a JobSet restart replaces (not the node:
a replaced node restores from --workdir's persistent checkpoints).

--dry_run prints the manifest(s) as YAML and applies nothing; otherwise each goes to
`kubectl apply -f -` (kubectl configured for the cluster).
"""

from __future__ import annotations

import pathlib
import re
import shlex
import subprocess
import sys

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# GKE node labels of the TPU generations (cloud.google.com/gke-tpu-accelerator).
ACCELERATORS = {'v4': 'tpu-v4-podslice', 'v5e': 'tpu-v5-lite-podslice',
                'v5p': 'tpu-v5p-slice', 'v6e': 'tpu-v6e-slice'}
PORTS = (8471, 8080)  # the TPU runtime's ports between hosts


def define_flags() -> None:
  flags.DEFINE_string('name', None, 'JobSet name (a sweep adds each run\'s name).')
  flags.DEFINE_string('tpu', None, 'One slice, as guide_jax.aot names it: v5p:4x4x2, '
                      'v5e:4x4, v6e:2x4, v4:2x2x2.')
  flags.DEFINE_integer('num_slices', 1, 'Slices joined over DCN.')
  flags.DEFINE_string('image', None, 'Container image built from the repository Dockerfile.')
  flags.DEFINE_string('config', None, 'Experiment file, relative to the repository.')
  flags.DEFINE_string('workdir', None, 'Run directory on gs:// (every host reads and writes it).')
  flags.DEFINE_string('sweep', '', 'One JobSet per entry of get_sweep(NAME).')
  flags.DEFINE_multi_string('override', [], 'Extra --config.FIELD=VALUE flags for every run.')
  flags.DEFINE_integer('max_restarts', 4, 'JobSet restarts after a failure or preemption.')
  flags.DEFINE_string('namespace', 'default', 'Kubernetes namespace.')
  flags.DEFINE_string('local_checkpoint_dir', '', 'The local checkpoint tier in the container '
                      '(the node\'s RAM disk mounted there); empty: none.')
  flags.DEFINE_integer('local_checkpoint_every', 0, 'Steps between local-tier checkpoints.')
  flags.DEFINE_bool('dry_run', False, 'Print the manifests; apply nothing.')
  flags.mark_flags_as_required(['name', 'tpu', 'image', 'config', 'workdir'])


def slice_shape(tpu: str) -> tuple[str, str, int, int]:
  """(accelerator label, topology, hosts per slice, chips per host) of `v5p:4x4x2`."""
  from guide_jax import aot
  generation, chips = aot.parse_topology(tpu)
  if generation not in ACCELERATORS:
    raise ValueError(f'--tpu={tpu!r}: GKE runs {sorted(ACCELERATORS)} here')
  # Multi-host slices have 4 chips a host; v5e and v6e also come as one 8-chip host (2x4).
  per_host = 8 if generation in ('v5e', 'v6e') and chips == 8 else min(chips, 4)
  return ACCELERATORS[generation], tpu.split(':')[1], chips // per_host, per_host


LOCAL_VOLUME = 'local-checkpoints'


def jobset(name: str, tpu: str, num_slices: int, image: str, command: str,
           max_restarts: int = 4, namespace: str = 'default', local_dir: str = '') -> dict:
  """The JobSet of one run: `num_slices` replicas of a job whose pods are the hosts of a
  slice, each on its own node pool (exclusive topology), each running `command`; with
  `local_dir`, the node's /dev/shm/guide_jax/NAME mounted there (the local tier)."""
  accelerator, topology, hosts, per_host = slice_shape(tpu)
  container = {
      'name': 'guide-jax', 'image': image, 'imagePullPolicy': 'Always',
      'command': ['bash', '-c', command],
      'ports': [{'containerPort': p} for p in PORTS],
      'securityContext': {'privileged': True},
      'resources': {'limits': {'google.com/tpu': per_host}},
  }
  pod = {
      'hostNetwork': True, 'dnsPolicy': 'ClusterFirstWithHostNet', 'restartPolicy': 'Never',
      'nodeSelector': {'cloud.google.com/gke-tpu-accelerator': accelerator,
                       'cloud.google.com/gke-tpu-topology': topology},
      'containers': [container],
  }
  if local_dir:
    container['volumeMounts'] = [{'name': LOCAL_VOLUME, 'mountPath': local_dir}]
    pod['volumes'] = [{'name': LOCAL_VOLUME, 'hostPath': {
        'path': f'/dev/shm/guide_jax/{name}', 'type': 'DirectoryOrCreate'}}]
  return {
      'apiVersion': 'jobset.x-k8s.io/v1alpha2', 'kind': 'JobSet',
      'metadata': {'name': name, 'namespace': namespace, 'annotations': {
          'alpha.jobset.sigs.k8s.io/exclusive-topology': 'cloud.google.com/gke-nodepool'}},
      'spec': {
          'failurePolicy': {'maxRestarts': max_restarts},
          'replicatedJobs': [{
              'name': 'slice', 'replicas': num_slices,
              'template': {'spec': {'parallelism': hosts, 'completions': hosts,
                                    'backoffLimit': 0, 'template': {'spec': pod}}}}]},
  }


def k8s_name(text: str) -> str:
  """A DNS-1035 label: lower case, digits and '-', at most 40 characters here (the JobSet
  controller appends job and pod suffixes)."""
  label = re.sub(r'[^a-z0-9-]+', '-', text.lower()).strip('-')
  return label[:40].rstrip('-')


def manifests(name: str, tpu: str, num_slices: int, image: str, config: str, workdir: str,
              sweep: str = '', overrides: tuple[str, ...] = (), max_restarts: int = 4,
              namespace: str = 'default', local_dir: str = '',
              local_every: int = 0) -> list[dict]:
  """One JobSet per run: the run itself, or every run of the sweep (guide_jax.sweep)."""
  if bool(local_dir) != (local_every > 0):
    raise ValueError(f'--local_checkpoint_dir={local_dir!r} and --local_checkpoint_every='
                     f'{local_every}: give both (a path in the container and a positive '
                     f'interval) or neither')
  local = [f'--config.train.local_checkpoint_dir={local_dir}',
           f'--config.train.local_checkpoint_every={local_every}'] if local_dir else []
  base = ['python', '-m', 'guide_jax.main', f'--config={config}', *overrides, *local]
  if not sweep:
    runs = [(name, base + [f'--workdir={workdir}'])]
  else:
    from guide_jax import experiment_file
    from guide_jax import sweep as sweep_lib
    module = experiment_file.load_module(REPO / config)
    runs = [(f'{name}-{run.name}', base + run.flags()) for run in
            sweep_lib.runs(module.get_config(), sweep_lib.entries(module, sweep), workdir)]
  return [jobset(k8s_name(run_name), tpu, num_slices, image, shlex.join(command),
                 max_restarts, namespace, local_dir) for run_name, command in runs]


def main(argv):
  del argv
  import yaml
  f = flags.FLAGS
  if f.num_slices < 1:
    print(f'error: --num_slices={f.num_slices} must be >= 1', file=sys.stderr)
    sys.exit(2)
  try:
    docs = manifests(f.name, f.tpu, f.num_slices, f.image, f.config, f.workdir, f.sweep,
                     tuple(f.override), f.max_restarts, f.namespace, f.local_checkpoint_dir,
                     f.local_checkpoint_every)
  except ValueError as e:  # a bad --tpu, --config or --sweep (SweepError is one)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  text = yaml.safe_dump_all(docs, sort_keys=False)
  if f.dry_run:
    print(text, end='')
    return
  subprocess.run(['kubectl', 'apply', '-f', '-'], input=text, text=True, check=True)


if __name__ == '__main__':
  define_flags()
  app.run(main)
