"""Two local processes (loopback coordinator, gloo CPU collectives) train like one."""

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, train_losses

WORKER = os.path.join(REPO, 'tests', 'mp_worker.py')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _run(nproc, devices_per_process, workdir, tmp_path, tag, interrupt_at=None, local=None):
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  if local:
    env['GUIDE_LOCAL_TIER'] = str(local)
  port = _free_port()
  procs, outs = [], []
  for pid in range(nproc):
    out = tmp_path / f'{tag}_{pid}.json'
    args = [sys.executable, WORKER, str(pid), str(nproc), str(port),
            str(devices_per_process), str(workdir), str(out)]
    if interrupt_at is not None:
      args.append(str(interrupt_at))
    procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
    outs.append(out)
  logs = []
  for p in procs:
    log, _ = p.communicate(timeout=900)
    assert p.returncode == 0, log[-4000:]
    logs.append(log)
  return [json.loads(o.read_text()) | {'log': log} for o, log in zip(outs, logs)]


@pytest.mark.slow  # ~2-3 minutes: three trainer runs in subprocesses
def test_two_processes_match_one_and_resume(tmp_path):
  single = tmp_path / 'single'
  one = _run(1, 4, single, tmp_path, 'single')  # also fills the tokenizer cache first
  assert one[0]['devices'] == 4 and one[0]['step'] == 6

  multi, local = tmp_path / 'multi', tmp_path / 'local'
  first = _run(2, 2, multi, tmp_path, 'first', interrupt_at=3, local=local)
  assert [r['process_index'] for r in first] == [0, 1]
  assert all(r['process_count'] == 2 and r['devices'] == 4 and r['step'] == 3 for r in first)
  # Each process keeps its own local tier (its shards only); lose the persistent step 3,
  # as when a preemption came before it was written: the restart takes the local one.
  assert [sorted(os.listdir(local / f'process_{p}')) for p in (0, 1)] == [['2', '3']] * 2
  shutil.rmtree(multi / 'checkpoints' / '3')
  second = _run(2, 2, multi, tmp_path, 'second', local=local)  # resumes at step 3
  assert all(r['step'] == 6 for r in second)
  # (process 0 prints; process 1 has no persistent step 3 to fall back on, so it too
  # restored its local copy, and the losses below equal the single run's)
  assert f'starting at step 3 (restored {local}/process_0/3 in ' in second[0]['log']

  # Persistent checkpoints are written once, by the processes together.
  assert sorted(os.listdir(multi / 'checkpoints')) == ['6']
  assert sorted(os.listdir(multi / 'teacher' / 'checkpoints')) == ['3', '4']

  # The loss trajectory equals the single-process run on the same 4-device mesh.
  expected, got = train_losses(single), train_losses(multi)
  assert sorted(got) == list(range(1, 7))
  np.testing.assert_allclose([got[s] for s in sorted(got)],
                             [expected[s] for s in sorted(got)], rtol=0, atol=1e-5)
  assert second[0]['eval_loss'] == pytest.approx(one[0]['eval_loss'], abs=1e-5)

  # Each process read only its half of every global batch: together, the single run's.
  single_rows = {step: rows for step, _, rows in one[0]['rows']}
  for step in range(6):
    halves = {}
    for record in first + second:
      for s, proc, rows in record['rows']:
        if s == step and record['process_index'] == proc:
          halves[proc] = rows
    assert [len(halves[p]) for p in (0, 1)] == [4, 4]
    assert halves[0] + halves[1] == single_rows[step]
