"""XManager launcher: one work unit per run of a sweep (or one run), on this machine,
on Vertex AI, or on Kubernetes (GKE).

xmanager lives in its own virtual environment, because it pins protobuf and other
Google client libraries apart from what the training stack needs (`make xm-venv`
builds `.venv-xm` from launch/requirements-xm.txt). The launcher never imports JAX or
the experiment file: it asks the project's Python (`--python`, default `.venv`) to
expand the sweep through `python -m guide_jax.sweep`, the same function the local study
runner and launch/tpu_vm.py use, and every job runs `python -m guide_jax.main` with the
run's flags.

  # two tiny runs on this machine, waiting for both (the tests do this)
  .venv-xm/bin/python launch/xm_launch.py --config=experiments/lm_tiny.py --sweep=seeds \
      --workdir=workdirs/xm_seeds --executor=local

  # the 1B student on a v5p-64 slice through Vertex AI (builds and pushes an image)
  .venv-xm/bin/python launch/xm_launch.py --config=experiments/guide_1b.py \
      --workdir=gs://BUCKET/guide_1b --executor=vertex --accelerator=tpu_v5p=4x4x2 \
      --image_tag=gcr.io/PROJECT/guide_jax:latest

  # a sweep on GKE with 8 A100s a run
  .venv-xm/bin/python launch/xm_launch.py --config=experiments/study_cpu.py --sweep=main \
      --workdir=gs://BUCKET/study --executor=kubernetes --accelerator=a100=8 \
      --image_tag=gcr.io/PROJECT/guide_jax:latest

The local executor runs the jobs side by side and waits; the launcher exits 1 if any
failed, naming them. The cloud executors return once the jobs are submitted. --dry_run
prints each job (executor, requirements, command) and launches nothing.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import subprocess
import sys

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parent.parent
EXECUTORS = ('local', 'vertex', 'kubernetes')
FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string('config', None, 'Experiment file, relative to the repository.')
  flags.DEFINE_string('workdir', None, 'Run directory; with --sweep, the root of the runs.')
  flags.DEFINE_string('sweep', '', 'Launch every entry of get_sweep(NAME) instead of one run.')
  flags.DEFINE_multi_string('override', [], 'Extra --config.FIELD=VALUE flags for every run.')
  flags.DEFINE_enum('executor', 'local', EXECUTORS, 'Where the jobs run.')
  flags.DEFINE_string('python', str(REPO / '.venv' / 'bin' / 'python'),
                      "The project's Python: expands the sweep; runs the local jobs.")
  flags.DEFINE_string('accelerator', '',
                      'Cloud executors: RESOURCE=AMOUNT as xm.JobRequirements takes it, '
                      'e.g. tpu_v5p=4x4x2 (a topology) or a100=8 (a count).')
  flags.DEFINE_integer('cpu', 0, 'Cloud executors: vCPUs per job (0: the default).')
  flags.DEFINE_integer('ram_gib', 0, 'Cloud executors: RAM per job in GiB (0: the default).')
  flags.DEFINE_string('image_tag', '', 'Cloud executors: registry tag to push the image to.')
  flags.DEFINE_string('base_image', 'python:3.11-slim', 'Cloud executors: Docker base image.')
  flags.DEFINE_string('extras', 'seqio',
                      'Cloud executors: package extras to install; tpu or gpu is added '
                      'from --accelerator.')
  flags.DEFINE_string('tpu_runtime_version', 'tpu-ubuntu2204-base',
                      'Kubernetes executor: TPU software version for TPU accelerators.')
  flags.DEFINE_string('title', '', 'Experiment title (default: config stem and sweep).')
  flags.DEFINE_bool('dry_run', False, 'Print the jobs; launch nothing.')
  flags.mark_flags_as_required(['config', 'workdir'])


class LaunchError(Exception):
  """A launch that cannot work; main prints it as one line and exits 2."""


def expand_runs(python: str, config: str, sweep: str, root: str) -> list[dict]:
  """The runs as {"name", "workdir", "flags"}, from the project's own environment."""
  if not pathlib.Path(python).is_file():
    raise LaunchError(f'--python={python} does not exist; run `make install` or pass the '
                      "project's virtual environment")
  cmd = [python, '-m', 'guide_jax.sweep', f'--config={config}', f'--root={root}']
  if sweep:
    cmd.append(f'--sweep={sweep}')
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  if out.returncode != 0:
    raise LaunchError(out.stderr.strip().splitlines()[-1] if out.stderr.strip()
                      else f'{" ".join(cmd)} exited {out.returncode}')
  return [json.loads(line) for line in out.stdout.splitlines() if line.startswith('{')]


def job_requirements(accelerator: str, cpu: int = 0, ram_gib: int = 0):
  """xm.JobRequirements from the flags: 'tpu_v5p=4x4x2' (a topology) or 'a100=8' (a
  count), plus vCPUs and RAM when non-zero. The local executor ignores them."""
  from xmanager import xm
  resources: dict[str, object] = {}
  if accelerator:
    name, sep, amount = accelerator.partition('=')
    if not sep or not name or not amount:
      raise LaunchError(f'--accelerator={accelerator!r}: write RESOURCE=AMOUNT, e.g. '
                        'tpu_v5p=4x4x2 or a100=8')
    resources[name.lower()] = int(amount) if amount.isdigit() else amount
  if cpu:
    resources['cpu'] = cpu
  if ram_gib:
    resources['ram'] = ram_gib * xm.GiB
  try:
    return xm.JobRequirements(**resources)
  except (KeyError, ValueError) as e:
    raise LaunchError(f'--accelerator={accelerator!r}: {e}') from e


def pip_extras(extras: str, accelerator: str) -> str:
  """The extras a cloud image installs: --extras plus tpu/gpu for the accelerator."""
  names = [e for e in extras.split(',') if e]
  kind = accelerator.lower()
  if kind.startswith('tpu'):
    names.append('tpu')
  elif kind:
    names.append('gpu')
  return ','.join(dict.fromkeys(names))


def build(executor_name: str, requirements):
  """(executor, packageable) for --executor. Local jobs run the project's Python on this
  machine; cloud jobs run in an image built from this checkout with the package
  installed (its extras: --extras plus tpu or gpu)."""
  from xmanager import xm, xm_local
  if executor_name == 'local':
    return (xm_local.Local(experimental_stream_output=True),
            xm.binary(executor_spec=xm_local.Local.Spec(), path=FLAGS.python,
                      args=['-m', 'guide_jax.main']))
  if executor_name == 'vertex':
    executor = xm_local.Vertex(requirements=requirements)
    spec = xm_local.Vertex.Spec(push_image_tag=FLAGS.image_tag)
  else:
    tpu = (xm_local.TpuCapability(tpu_runtime_version=FLAGS.tpu_runtime_version)
           if FLAGS.accelerator.lower().startswith('tpu') else None)
    executor = xm_local.Kubernetes(requirements=requirements, tpu_capability=tpu)
    spec = xm_local.Kubernetes.Spec(push_image_tag=FLAGS.image_tag)
  extras = pip_extras(FLAGS.extras, FLAGS.accelerator)
  return executor, xm.python_container(
      executor_spec=spec, path=str(REPO), base_image=FLAGS.base_image,
      entrypoint=xm.ModuleName('guide_jax.main'),
      docker_instructions=[f'COPY {REPO.name}/ /guide_jax_src', 'WORKDIR /guide_jax_src',
                           f"RUN python -m pip install --no-cache-dir '.[{extras}]'"])


def main(argv) -> None:
  del argv
  try:
    config = FLAGS.config
    workdir = FLAGS.workdir
    if FLAGS.executor == 'local':
      # Local jobs inherit this process's working directory; make the paths mean the
      # same from anywhere. URLs (gs://) are left alone.
      config = str(pathlib.Path(config).resolve())
      if '://' not in workdir:
        workdir = str(pathlib.Path(workdir).resolve())
    runs = expand_runs(FLAGS.python, config, FLAGS.sweep, workdir)
    requirements = job_requirements(FLAGS.accelerator, FLAGS.cpu, FLAGS.ram_gib)
    if FLAGS.executor != 'local' and not FLAGS.image_tag and not FLAGS.dry_run:
      raise LaunchError(f'--executor={FLAGS.executor} pushes an image: pass '
                        '--image_tag=REGISTRY/IMAGE:TAG')
  except LaunchError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)

  job_args = {run['name']: [f'--config={config}', *FLAGS.override, *run['flags']]
              for run in runs}
  executor, packageable = build(FLAGS.executor, requirements)
  if FLAGS.dry_run:
    for name, args in job_args.items():
      print(json.dumps({'name': name, 'executor': repr(executor),
                        'command': ['python', '-m', 'guide_jax.main', *args]}))
    return

  title = FLAGS.title or '_'.join(filter(None, [pathlib.Path(config).stem, FLAGS.sweep]))
  failed = asyncio.run(_launch(title, packageable, executor, job_args,
                               wait=FLAGS.executor == 'local'))
  if failed:
    print(f'error: {len(failed)} of {len(job_args)} runs failed: {", ".join(failed)}',
          file=sys.stderr)
    sys.exit(1)


async def _launch(title: str, packageable, executor, job_args: dict[str, list[str]],
                  wait: bool) -> list[str]:
  """Adds one work unit per run; with `wait`, returns the names of those that failed."""
  from xmanager import xm, xm_local
  failed: list[str] = []
  try:
    async with xm_local.create_experiment(experiment_title=title) as experiment:
      [executable] = experiment.package([packageable])
      units = {}
      for name, args in job_args.items():
        units[name] = await experiment.add(xm.Job(executable, executor, args=args,
                                                  name=name.replace('/', '_')))
      print(f'experiment {experiment.experiment_id} ({title}): {len(units)} work units')
      if wait:
        results = await asyncio.gather(
            *(unit.wait_until_complete() for unit in units.values()), return_exceptions=True)
        failed = [name for name, r in zip(units, results) if isinstance(r, Exception)]
  except RuntimeError:
    # Leaving the experiment waits for its local jobs again and re-raises a failed
    # job's exit status; the failures are already counted.
    if not failed:
      raise
  return failed


if __name__ == '__main__':
  define_flags()
  app.run(main)
