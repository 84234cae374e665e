"""Two local processes (loopback coordinator, gloo CPU collectives) train like one."""

import json
import os
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


def _run(nproc, devices_per_process, workdir, tmp_path, tag, interrupt_at=None):
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
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
  for p in procs:
    log, _ = p.communicate(timeout=900)
    assert p.returncode == 0, log[-4000:]
  return [json.loads(o.read_text()) for o in outs]


@pytest.mark.slow  # ~2-3 minutes: three trainer runs in subprocesses
def test_two_processes_match_one_and_resume(tmp_path):
  single = tmp_path / 'single'
  one = _run(1, 4, single, tmp_path, 'single')  # also fills the tokenizer cache first
  assert one[0]['devices'] == 4 and one[0]['step'] == 6

  multi = tmp_path / 'multi'
  first = _run(2, 2, multi, tmp_path, 'first', interrupt_at=3)
  assert [r['process_index'] for r in first] == [0, 1]
  assert all(r['process_count'] == 2 and r['devices'] == 4 and r['step'] == 3 for r in first)
  second = _run(2, 2, multi, tmp_path, 'second')  # a restart resumes at step 3
  assert all(r['step'] == 6 for r in second)

  # Checkpoints were written once, by the processes together (no per-process copies).
  assert sorted(os.listdir(multi / 'checkpoints')) == ['3', '6']
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
