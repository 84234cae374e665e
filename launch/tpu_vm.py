"""Run guide_jax on a Cloud TPU VM slice: create it, ship the code, run on every worker,
stream the logs, delete it.

  python launch/tpu_vm.py --name=guide-1b --zone=us-east5-a --accelerator_type=v5p-64 \
      --config=experiments/guide_1b.py --workdir=gs://BUCKET/guide_1b [--dry_run]

  # a sweep: every run of get_sweep(NAME), one after another on the same slice
  python launch/tpu_vm.py ... --config=experiments/study_cpu.py --sweep=main \
      --workdir=gs://BUCKET/study

Every command goes through `gcloud compute tpus tpu-vm` with `--worker=all`, so each host
of the slice runs the same `python -m guide_jax.main`; jax.distributed finds its peers
from the TPU metadata. The code is shipped as a `git archive` of HEAD (commit first) and
installed with the `tpu` extra. --dry_run prints the exact commands and runs nothing.
The slice is deleted at the end, also when a command fails, unless --keep.
"""

from __future__ import annotations

import pathlib
import shlex
import subprocess
import sys

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

REMOTE_DIR = 'guide_jax_src'
ARCHIVE = '/tmp/guide_jax_src.tar.gz'


def define_flags() -> None:
  flags.DEFINE_string('name', None, 'TPU VM (slice) name.')
  flags.DEFINE_string('zone', None, 'Zone, e.g. us-east5-a.')
  flags.DEFINE_string('accelerator_type', None, 'e.g. v5p-64, v5litepod-16, v6e-8.')
  flags.DEFINE_string('version', 'tpu-ubuntu2204-base', 'TPU VM software version.')
  flags.DEFINE_string('project', '', 'GCP project (default: gcloud config).')
  flags.DEFINE_bool('spot', False, 'Create a Spot slice (preemptible; the trainer resumes).')
  flags.DEFINE_string('config', None, 'Experiment file, relative to the repository.')
  flags.DEFINE_string('workdir', None, 'Run directory (gs:// on multi-host slices).')
  flags.DEFINE_string('sweep', '', 'Run every entry of get_sweep(NAME) instead of one run.')
  flags.DEFINE_multi_string('override', [], 'Extra --config.FIELD=VALUE flags for every run.')
  flags.DEFINE_bool('keep', False, 'Do not delete the slice at the end.')
  flags.DEFINE_bool('dry_run', False, 'Print the gcloud commands; run nothing.')
  flags.mark_flags_as_required(['name', 'zone', 'accelerator_type', 'config', 'workdir'])


def _tpu(verb: str, name: str, zone: str, project: str, *rest: str) -> list[str]:
  cmd = ['gcloud', 'compute', 'tpus', 'tpu-vm', verb, name, f'--zone={zone}']
  if project:
    cmd.append(f'--project={project}')
  return cmd + list(rest)


def train_commands(config: str, workdir: str, sweep: str = '',
                   overrides: tuple[str, ...] = ()) -> list[str]:
  """The `python -m guide_jax.main` command line(s) every worker runs."""
  base = ['python3', '-m', 'guide_jax.main', f'--config={config}', *overrides]
  if not sweep:
    return [shlex.join(base + [f'--workdir={workdir}'])]
  from guide_jax import experiment_file
  from guide_jax import sweep as sweep_lib
  module = experiment_file.load_module(REPO / config)
  runs = sweep_lib.runs(module.get_config(), sweep_lib.entries(module, sweep), workdir)
  return [shlex.join(base + run.flags()) for run in runs]


def commands(name: str, zone: str, accelerator_type: str, config: str, workdir: str,
             version: str = 'tpu-ubuntu2204-base', project: str = '', spot: bool = False,
             sweep: str = '', overrides: tuple[str, ...] = (),
             keep: bool = False) -> list[list[str]]:
  """Every command, in order: archive, create, copy, install, train (one per run),
  delete. The last is the cleanup, run even after a failure."""
  create = _tpu('create', name, zone, project, f'--accelerator-type={accelerator_type}',
                f'--version={version}')
  if spot:
    create.append('--spot')
  ssh = lambda command: _tpu('ssh', name, zone, project, '--worker=all',
                             f'--command={command}')
  out = [['git', '-C', str(REPO), 'archive', '--format=tar.gz', f'--output={ARCHIVE}',
          'HEAD'],
         create,
         _tpu('scp', name, zone, project, '--worker=all', ARCHIVE, f'{name}:~/'),
         ssh(f'mkdir -p {REMOTE_DIR} && tar xzf ~/guide_jax_src.tar.gz -C {REMOTE_DIR} && '
             f"cd {REMOTE_DIR} && pip install -q -e '.[tpu]'")]
  out += [ssh(f'cd {REMOTE_DIR} && {cmd}')
          for cmd in train_commands(config, workdir, sweep, overrides)]
  if not keep:
    out.append(_tpu('delete', name, zone, project, '--quiet'))
  return out


def main(argv):
  del argv
  f = flags.FLAGS
  cmds = commands(f.name, f.zone, f.accelerator_type, f.config, f.workdir, f.version,
                  f.project, f.spot, f.sweep, tuple(f.override), f.keep)
  if f.dry_run:
    for cmd in cmds:
      print(shlex.join(cmd))
    return
  work, cleanup = (cmds, []) if f.keep else (cmds[:-1], cmds[-1:])
  try:
    for cmd in work:
      print('+ ' + shlex.join(cmd), flush=True)
      subprocess.run(cmd, check=True)  # ssh streams every worker's output here
  finally:
    for cmd in cleanup:
      print('+ ' + shlex.join(cmd), flush=True)
      subprocess.run(cmd, check=False)


if __name__ == '__main__':
  define_flags()
  app.run(main)
