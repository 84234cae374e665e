"""The benchmark harness: its JSON fields and its error exits (never its timings)."""

import json
import os
import subprocess
import sys

from conftest import REPO

FIELDS = ('step_time_s', 'tokens_per_sec', 'mfu', 'compile_s')


def run_bench(*args):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'guide_jax.bench', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def test_bench_reports_every_arm_as_json():
  arms = ('baseline', 'kd')  # bench.ARMS has three more: the same code paths
  out = run_bench('--config=experiments/guide_tiny.py', '--steps=2',
                  '--config.data.backend=synthetic', '--compile_depths=1,2',
                  f'--arms={",".join(arms)}')
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert set(result['arms']) == set(arms) and set(result['ratios']) == set(arms)
  for arm in arms:
    r = result['arms'][arm]
    assert all(r[k] > 0 for k in FIELDS), r
    assert 0 < r['mfu_student'] <= r['mfu']
    assert result['ratios'][arm] == r['step_time_s'] / result['arms']['baseline']['step_time_s']
  assert result['ratios']['baseline'] == 1.0
  assert result['peak_flops'] > 0
  # guide_tiny: student d32 f64 (2 layers), teacher d64 f128, vocab 512, batch 8 x 64.
  assert result['kd_theory_ratio'] == 1 + (result['teacher_forward_flops_per_step'] /
                                           result['student_train_flops_per_step'])
  assert result['arms']['kd']['mfu'] > result['arms']['kd']['mfu_student']
  assert result['arms']['baseline']['mfu'] == result['arms']['baseline']['mfu_student']
  assert set(result['compile_s_by_depth']) == {'1', '2'}


def test_bench_without_teacher_or_bad_arm_exits_2():
  out = run_bench('--config=experiments/lm_tiny.py', '--steps=1')
  assert out.returncode == 2 and 'teacher' in out.stderr.strip().splitlines()[-1]
  out = run_bench('--config=experiments/guide_tiny.py', '--arms=baseline,nope')
  assert out.returncode == 2 and "unknown ['nope']" in out.stderr
