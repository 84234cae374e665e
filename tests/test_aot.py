"""Ahead-of-time compilation for TPU topologies (needs libtpu: pip install -e '.[tpu]')."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                                  reason="libtpu is not installed (pip install -e '.[tpu]')")


def run_aot(*args):
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  return subprocess.run([sys.executable, '-m', 'guide_jax.aot', *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=1200)


def test_topology_names_and_advice():
  from guide_jax import aot
  from guide_jax import config as config_lib
  assert aot.parse_topology('v5p:4x4x2') == ('v5p', 32)
  assert aot.parse_topology('v5e:2x2') == ('v5e', 4)
  with pytest.raises(ValueError, match='GENERATION:AxB'):
    aot.parse_topology('h100:8')
  cfg = config_lib.base_config()
  tips = aot.advice(cfg)
  assert 'mesh.fsdp=-1' in tips and "teacher.dtype='bfloat16'" in tips


@needs_libtpu
def test_tiny_distillation_step_compiles_for_a_v5e_slice():
  out = run_aot('--config=experiments/guide_tiny.py', '--topology=v5e:2x2')
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r['devices'] == 4 and r['fits']
  d = r['per_device']
  assert 0 < d['total_bytes'] <= d['hbm_bytes'] == 16 * 2**30
  assert d['xla_flops_loop_bodies_once'] > 0 and 0 < r['roofline_mfu'] <= 1
  assert r['per_chip_gib'] == d['total_bytes'] / 2**30 and r['capacity_gib'] == 16.0
  assert r['temporaries_gib'] == d['temp_bytes'] / 2**30 and r['compile_s'] > 0
  # lm_tiny's 2 blocks per stack: the whole step costs more than one scanned body
  assert d['xla_flops_whole_step'] > d['xla_flops_loop_bodies_once']
  assert r['roofline_bound_by'] in ('compute', 'memory')


@needs_libtpu
def test_splash_step_compiles_for_a_small_v5p_slice():
  """The GUIDE+KD step with the Pallas splash kernel (student and teacher) under shard_map,
  compiled by libtpu; auto picks splash on TPU once the sequence fits its blocks."""
  seq = ['--config.data.seq_len=256', '--config.model.max_len=256',
         '--config.teacher.pretrain.model.max_len=256', '--topology=v5p:2x2x1',
         '--whole_step=false']
  splash = run_aot('--config=experiments/guide_tiny.py', *seq, '--attention_kernel=splash')
  assert splash.returncode == 0, splash.stderr[-3000:]
  xla = run_aot('--config=experiments/guide_tiny.py', *seq, '--attention_kernel=xla')
  r, x = (json.loads(o.stdout.strip().splitlines()[-1]) for o in (splash, xla))
  assert r['attention_kernel'] == r['teacher_attention_kernel'] == 'splash' and r['fits']
  assert x['attention_kernel'] == 'xla' and r['devices'] == x['devices'] == 4
  # the kernel is in the compiled step: its flops are not XLA's dot flops
  assert r['per_device']['xla_flops_loop_bodies_once'] != x['per_device']['xla_flops_loop_bodies_once']


WHOLE_STEP = """
import json, os
from guide_jax import aot
for key, value in aot.QUIET_LIBTPU.items():
  os.environ.setdefault(key, value)
from jax.experimental import topologies
from guide_jax import experiment_file
from guide_jax.train import teacher
module = experiment_file.load_module('experiments/guide_tiny.py')
devices = topologies.get_topology_desc(platform='tpu', topology_name='v5e:2x2').devices
out = []
for student_blocks in (2, 3):
  cfg = module.get_config()
  cfg.model.n_layers, cfg.teacher.pretrain.model.n_layers = student_blocks, 6
  cfg.guide.blocks = 'all'  # MATCH on every student block: a per-block cost too
  t_model = teacher.model_config(cfg, module)
  estimate = aot.whole_step_cost(cfg, t_model, devices)
  cfg.model.scan_layers = t_model.scan_layers = False
  out.append([estimate, aot._xla_cost(aot.compile_step(cfg, t_model, devices)[0])])
print(json.dumps(out))
"""


@needs_libtpu
def test_whole_step_flops_extrapolate_to_the_unrolled_step():
  """A 6-block teacher's step from 2- and 3-block compiles: the FLOPs equal those of the
  fully unrolled compile, for a 2-block student and (using the per-student-block cost)
  a 3-block one. Bytes accessed are an estimate (see whole_step_cost): not compared."""
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_PLATFORMS')}
  out = subprocess.run([sys.executable, '-c', WHOLE_STEP], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=1200)
  assert out.returncode == 0, out.stderr[-3000:]
  for (est_flops, est_bytes), (flops, _) in json.loads(out.stdout.strip().splitlines()[-1]):
    assert est_flops == pytest.approx(flops, rel=1e-5)
    assert est_bytes > 0


@needs_libtpu
def test_a_step_that_cannot_fit_exits_1_with_advice():
  out = run_aot('--config=experiments/guide_tiny.py', '--topology=v5e:2x2',
                '--config.data.global_batch_size=262144')  # ~32 GiB of logits per chip
  assert out.returncode == 1, out.stderr[-3000:]
  assert 'does not fit v5e:2x2' in out.stderr and 'grad_accum' in out.stderr


@pytest.mark.slow
@needs_libtpu
@pytest.mark.parametrize('name', ['guide_400m', 'guide_1b', 'guide_1b_8k'])
def test_paper_configs_fit_their_stated_slice(name):
  out = run_aot(f'--config=experiments/{name}.py')  # --topology defaults to config.topology
  print(out.stdout)  # the per-chip report, shown with pytest -s
  assert out.returncode == 0, out.stderr[-3000:]
  r = json.loads(out.stdout.strip().splitlines()[-1])
  assert r['fits'] and r['topology']
  assert r['attention_kernel'] == r['teacher_attention_kernel'] == 'splash'


@needs_libtpu
def test_a_step_from_a_teacher_logits_cache_holds_no_teacher():
  """--teacher_logits_top_k compiles the step that reads the cache: the teacher's
  parameters are no argument of it, and its FLOPs are not counted."""
  args = ('--config=experiments/guide_tiny.py', '--topology=v5e:2x2', '--whole_step=false')
  online, cached = run_aot(*args), run_aot(*args, '--teacher_logits_top_k=16')
  assert online.returncode == 0 and cached.returncode == 0, cached.stderr[-3000:]
  r0, r1 = (json.loads(o.stdout.strip().splitlines()[-1]) for o in (online, cached))
  assert r0['teacher_logits_top_k'] == 0 and r1['teacher_logits_top_k'] == 16
  assert r1['per_device']['argument_bytes'] < r0['per_device']['argument_bytes']
  assert r1['model_flops_per_step'] < r0['model_flops_per_step']
  assert 'teacher from a top-16 logits cache' in cached.stdout


@needs_libtpu
def test_two_slices_compile_over_dcn_and_a_mismatch_is_one_line():
  args = ('--config=experiments/guide_tiny.py', '--topology=v5e:2x2', '--num_slices=2',
          '--whole_step=false')
  two = run_aot(*args, '--config.mesh.dcn_data=2')
  assert two.returncode == 0, two.stderr[-3000:]
  r = json.loads(two.stdout.strip().splitlines()[-1])
  assert r['num_slices'] == 2 and r['devices'] == 8 and r['fits']
  assert two.stdout.startswith('2 x v5e:2x2: 8 x ')
  bad = run_aot(*args)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
      'error: mesh.dcn_data*mesh.dcn_fsdp = 1 but the devices span 2 slice(s); make their '
      'product 2')
