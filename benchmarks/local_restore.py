"""Restore from the local checkpoint tier after kill -9: time, and bitwise equality.

  python benchmarks/local_restore.py [--steps=24] [--kill_after=21] [--out=FILE.json]

experiments/lm_tiny.py widened to d_model 768, 6 blocks (about 45M parameters; a train
state of params and Adam moments of ~0.55 GB), trained by `python -m guide_jax.main` in
subprocesses on one CPU device each:
  reference   never stopped
  killed      persistent checkpoints every 12 steps in the workdir, a local tier every 2
              steps in /dev/shm (a RAM disk); kill -9 once step --kill_after is logged,
              then restarted: it restores the local tier's newest step
  persistent  a copy of the killed run's workdir, restarted without the local tier: it
              restores the older persistent step and redoes the steps since
Printed: each restart's restore seconds (as the trainer logs them), the steps it redid,
its wall time, and whether its final parameters equal the reference's bit for bit. The
persistent tier here is the local disk, so its restore time is a floor for GCS.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_STEPS = flags.DEFINE_integer('steps', 24, 'Train steps of every run.')
_KILL_AFTER = flags.DEFINE_integer('kill_after', 21, 'kill -9 once this step is logged.')
_OUT = flags.DEFINE_string('out', '', 'Also write the JSON here.')

REPO = pathlib.Path(__file__).resolve().parent.parent
WIDE = ['--config.model.d_model=768', '--config.model.n_layers=6', '--config.model.n_heads=6',
        '--config.model.head_dim=128', '--config.model.n_kv_heads=2',
        '--config.model.mlp_dim=3072', '--config.train.log_every=1',
        '--config.train.eval_every=1000', '--config.train.checkpoint_every=12',
        '--config.train.progress_bar=False', '--config.train.async_checkpoints=False',
        '--config.train.peak_flops=1e11']
ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_NUM_CPU_DEVICES': '1'}


def command(workdir, steps, local_dir=''):
  cmd = [sys.executable, '-m', 'guide_jax.main', '--config=experiments/lm_tiny.py',
         f'--workdir={workdir}', f'--config.train.steps={steps}', *WIDE]
  if local_dir:
    cmd += [f'--config.train.local_checkpoint_dir={local_dir}',
            '--config.train.local_checkpoint_every=2']
  return cmd


def logged_steps(workdir) -> int:
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return 0
  steps = [json.loads(line).get('step', 0) for line in path.read_text().splitlines()
           if '"train/loss"' in line]
  return max(steps, default=0)


def restart(workdir, steps, local_dir='') -> dict:
  started = time.perf_counter()
  out = subprocess.run(command(workdir, steps, local_dir), cwd=REPO, env=ENV,
                       capture_output=True, text=True, check=True).stdout
  found = re.search(r'starting at step (\d+) \(restored (\S+) in ([\d.]+) s\)', out)
  return {'restored_step': int(found.group(1)), 'restored_from': found.group(2),
          'restore_s': float(found.group(3)), 'redone_steps': steps - int(found.group(1)),
          'wall_s': round(time.perf_counter() - started, 1)}


def final_params(workdir):
  from guide_jax import saved_model
  import jax
  return [jax.device_get(x) for x in jax.tree.leaves(saved_model.load(workdir).params)]


def main(argv):
  del argv
  import numpy as np
  os.environ.update({'JAX_PLATFORMS': 'cpu'})
  from guide_jax.train import flops
  cpu = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo')
              if line.startswith('model name')), 'unknown CPU')
  peak = flops.measured_matmul_peak('float32') / 1e9
  print(f'# {cpu}; {os.cpu_count()} cores; float32 matmul peak {peak:.0f} GFLOP/s', flush=True)
  work = pathlib.Path(tempfile.mkdtemp(prefix='guide_jax_restore_'))
  local = pathlib.Path(tempfile.mkdtemp(prefix='guide_jax_local_', dir='/dev/shm'))
  steps = _STEPS.value
  try:
    subprocess.run(command(work / 'reference', steps), cwd=REPO, env=ENV, check=True,
                   capture_output=True)
    process = subprocess.Popen(command(work / 'killed', steps, local), cwd=REPO, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while logged_steps(work / 'killed') < _KILL_AFTER.value:
      assert process.poll() is None, 'the run ended before it was killed'
      time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    persistent = sorted(os.listdir(work / 'killed' / 'checkpoints'))
    local_steps = sorted(os.listdir(local / 'process_0'))
    print(json.dumps({'killed_after_step': logged_steps(work / 'killed'),
                      'persistent_steps': persistent, 'local_steps': local_steps}), flush=True)
    shutil.copytree(work / 'killed', work / 'persistent')
    state_bytes = sum(f.stat().st_size for f in (local / 'process_0' / local_steps[-1]).rglob('*')
                      if f.is_file())
    results = {'from_local': restart(work / 'killed', steps, local),
               'from_persistent': restart(work / 'persistent', steps)}
    reference = final_params(work / 'reference')
    for name, run in (('from_local', 'killed'), ('from_persistent', 'persistent')):
      mine = final_params(work / run)
      results[name]['bitwise_equal'] = all(np.array_equal(a, b)
                                           for a, b in zip(reference, mine))
      print(json.dumps({name: results[name]}), flush=True)
    summary = {'cpu': cpu, 'matmul_peak_gflops': round(peak), 'steps': steps,
               'state_mb': round(state_bytes / 1e6, 1), **results}
    print(json.dumps(summary))
    if _OUT.value:
      pathlib.Path(_OUT.value).write_text(json.dumps(summary, indent=1) + '\n')
  finally:
    shutil.rmtree(local, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  sys.path.insert(0, str(REPO))
  app.run(main)
