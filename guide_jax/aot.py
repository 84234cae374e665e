"""Compile the real GUIDE+KD train step for a TPU slice, on any machine, ahead of time.

  pip install -e '.[tpu]'     # libtpu: compiles for TPU topologies without a TPU
  python -m guide_jax.aot --config=experiments/guide_1b.py [--topology=v5p:4x4x4]

Builds the config's mesh over the abstract devices of `--topology` (default: the
config's `topology` field, the smallest slice it is stated to fit), lowers the train step
the trainer runs (teacher forward + student forward/backward + optimizer update, state
donated) with every argument abstract and sharded as in training, compiles it with
libtpu, and prints per-chip HBM (arguments, temporaries, outputs, total vs capacity),
compile time, FLOPs per step from XLA's cost analysis, and a roofline step time and MFU
(a lower bound on step time from the model's FLOPs and the whole step's XLA FLOPs and
bytes accessed, extrapolated from three small unrolled compiles because XLA counts a
scanned block once; --nowhole_step skips them and leaves a compute bound).
Exit status 1 when the step does not fit, with what would make it fit.

Topology names: v4:2x2x1, v5e:4x4 (v5 lite), v5p:4x4x4, v6e:4x4, ... (chips per axis).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time

from absl import app, flags

from guide_jax import cli

# libtpu probes the host for TPU metadata at import; these tell it there is nothing to find.
QUIET_LIBTPU = {'TPU_SKIP_MDS_QUERY': '1', 'TPU_ACCELERATOR_TYPE': 'v5p-8',
                'TPU_WORKER_HOSTNAMES': 'localhost', 'TPU_WORKER_ID': '0',
                'TF_CPP_MIN_LOG_LEVEL': '3', 'GRPC_VERBOSITY': 'ERROR'}


@dataclasses.dataclass(frozen=True)
class Chip:
  hbm_bytes: float      # per chip
  peak_flops: float     # dense bf16 FLOP/s per chip
  hbm_bandwidth: float  # bytes/s per chip


CHIPS = {  # public spec sheets
    'v4': Chip(32 * 2**30, 275e12, 1.2e12),
    'v5e': Chip(16 * 2**30, 197e12, 0.82e12),
    'v5p': Chip(95 * 2**30, 459e12, 2.76e12),
    'v6e': Chip(32 * 2**30, 918e12, 1.64e12),
}


def parse_topology(name: str) -> tuple[str, int]:
  """'v5p:4x4x4' -> ('v5p', 64 chips)."""
  generation, _, dims = name.partition(':')
  if generation not in CHIPS or not dims:
    raise ValueError(f'--topology={name!r}: use GENERATION:AxB[xC] with GENERATION one of '
                     f'{sorted(CHIPS)}, e.g. v5p:4x4x4')
  return generation, math.prod(int(d) for d in dims.split('x'))


def compile_step(cfg, t_model, devices, teacher_top_k: int = 0):
  """(compiled train step, compile seconds) on a mesh over `devices`, all inputs abstract.
  `teacher_top_k` > 0: the step that reads a teacher-logits cache of that k instead of
  running the teacher (its parameters are then no input of the step)."""
  import jax
  import jax.numpy as jnp
  from guide_jax import guide, losses, saved_model, sharding
  from guide_jax.data import packing
  from guide_jax.models import transformer
  from guide_jax.train import on_policy, optimizer, steps
  from guide_jax.train import teacher_cache

  t_model = saved_model.runtime_model(t_model, cfg.teacher.dtype,  # as the trainer runs it
                                      cfg.teacher.attention_kernel)
  s_model = cfg.model
  mesh = sharding.make_mesh(cfg.mesh, devices)
  rules = tuple(cfg.logical_rules)

  teacher_shapes, teacher_shardings = transformer.abstract_params_and_shardings(
      t_model, mesh, rules)
  teacher_params = sharding.abstract(teacher_shapes, teacher_shardings)
  student_shapes, param_shardings = transformer.abstract_params_and_shardings(
      s_model, mesh, rules)
  tx = optimizer.make(cfg.train)
  # Outside set_mesh: optax builds a placeholder state eagerly, which cannot be placed on
  # the abstract devices of a topology.
  shardings = steps.state_shardings(param_shardings, tx, student_shapes, mesh)
  state = sharding.abstract(jax.eval_shape(lambda p: steps.new_state(p, tx), student_shapes),
                            shardings)
  with jax.set_mesh(mesh), sharding.use_rules(rules):
    theta_hat, layers, _ = guide.projected_teacher(teacher_params, t_model, s_model,
                                                   cfg.guide, param_shardings)
    b, s = cfg.data.global_batch_size, cfg.data.seq_len
    batch_sharding = sharding.batch_sharding(mesh, rules)
    batch = {k: jax.ShapeDtypeStruct((b, s), jnp.float32 if k == 'loss_weights' else jnp.int32,
                                     sharding=batch_sharding)
             for k in packing.FIELDS}
    if teacher_top_k:
      batch.update(teacher_cache.abstract_fields(b, s, teacher_top_k, batch_sharding))
      teacher_params = {}
    if on_policy.trains(cfg):
      # The step on rows the student wrote. Their sampling is a jit of its own
      # (train/on_policy.py), not compiled here.
      batch[losses.ON_POLICY] = jax.ShapeDtypeStruct((b, s), jnp.float32,
                                                     sharding=batch_sharding)
    loss = losses.DistillLoss(cfg.loss, cfg.train.steps, cfg.train.z_loss)
    objective = steps.distill_objective(
        s_model, None if teacher_top_k else t_model, loss, layers,
        losses.resolve_chunk_len(cfg.loss.chunk_len, cfg.data.seq_len))
    step = steps.jit_train_step(objective, tx, cfg.train, shardings)
    start = time.perf_counter()
    compiled = step.lower(state, batch, teacher_params, theta_hat).compile()
    return compiled, time.perf_counter() - start


def _xla_cost(compiled) -> tuple[float, float]:
  """(FLOPs, bytes accessed) per device from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0)), float(cost.get('bytes accessed', 0.0))


def whole_step_cost(cfg, t_model, devices, teacher_top_k: int = 0) -> tuple[float, float]:
  """XLA's (FLOPs, bytes accessed) per device for the whole step, every block counted.

  XLA's cost analysis counts a loop body once, so a scanned model reports one block per
  stack. Small unrolled compiles at (S0, T0), (S0, T0+1) and (S0+1, T0+1) student/teacher
  blocks, S0 = min(S, 2) and T0 = max(S0, min(T, 2)), give the cost of one more block of
  each stack, and this extrapolates linearly to the config's (S, T).
  - Teacher blocks (forward only) add exactly the same FLOPs each.
  - The first student block is special (XLA need not form its input's gradient), hence
    S0 = 2. Later ones add the same FLOPs in the scanned step; an unrolled compile adds a
    little more per block as depth grows (it assembles the stacked parameters' gradients
    slice by slice: ~0.01% at 4 blocks), which the scanned step does not do.
  - Bytes accessed extrapolate only roughly (XLA fuses each unrolled graph differently:
    up to ~10% off at 6 blocks); they matter only where the step is memory-bound.
  The micro-batch loop (train.grad_accum > 1) is a loop too: the compiles use one
  micro-batch and the result is scaled by grad_accum (which counts the optimizer update,
  outside that loop, grad_accum times: a small overcount)."""
  import numpy as np
  accum = cfg.train.grad_accum
  n_student, n_teacher = cfg.model.n_layers, t_model.n_layers

  def cost_at(student_blocks, teacher_blocks):
    c = cfg.copy_and_resolve_references()
    c.model.n_layers, c.model.scan_layers = student_blocks, False
    c.train.grad_accum = 1
    c.data.global_batch_size = cfg.data.global_batch_size // accum
    t = t_model.copy_and_resolve_references()
    t.n_layers, t.scan_layers = teacher_blocks, False
    return np.array(_xla_cost(compile_step(c, t, devices, teacher_top_k)[0]))

  s0 = min(n_student, 2)
  t0 = max(s0, min(n_teacher, 2))
  base = cost_at(s0, t0)
  total = base.copy()
  if n_teacher != t0 or n_student != s0:
    more_teacher = cost_at(s0, t0 + 1)
    total += (n_teacher - t0) * (more_teacher - base)
    if n_student != s0:
      total += (n_student - s0) * (cost_at(s0 + 1, t0 + 1) - more_teacher)
  return float(total[0] * accum), float(total[1] * accum)


def report(cfg, module, topology: str, whole_step: bool = True,
           attention_kernel: str = '', teacher_top_k: int = 0, num_slices: int = 1) -> dict:
  """Compile for `topology` and return the per-chip numbers (see the module docstring).
  `attention_kernel` (e.g. 'xla' against 'splash') sets model.attention_kernel and
  teacher.attention_kernel; '' keeps the config's. `teacher_top_k` > 0 compiles the step
  that reads a teacher-logits cache of that k (as does a config with teacher.logits_dir,
  at its cache's k). `num_slices` > 1 compiles for that many slices of `topology` joined
  over DCN (the config's mesh.dcn_* spread the step over them)."""
  for key, value in QUIET_LIBTPU.items():
    os.environ.setdefault(key, value)
  from jax.experimental import topologies
  from guide_jax import config as config_lib
  from guide_jax.train import flops

  generation, chips = parse_topology(topology)
  if num_slices < 1:
    raise config_lib.ConfigError(f'--num_slices={num_slices} must be >= 1')
  devices = topologies.get_topology_desc(platform='tpu', topology_name=topology,
                                         num_slices=num_slices).devices
  from guide_jax.train import teacher as teacher_lib
  t_model = teacher_lib.model_config(cfg, module)
  if attention_kernel:
    cfg = cfg.copy_and_resolve_references()
    cfg.model.attention_kernel = cfg.teacher.attention_kernel = attention_kernel
  config_lib.validate(cfg, len(devices), platform='tpu', num_slices=num_slices)
  t_running = teacher_lib.running_model(cfg, t_model, 'tpu')
  chip = CHIPS[generation]
  per_chip = len(devices) // (chips * num_slices)  # v4: both TensorCores are devices
  hbm, peak, bandwidth = (chip.hbm_bytes / per_chip, chip.peak_flops / per_chip,
                          chip.hbm_bandwidth / per_chip)
  if not teacher_top_k and cfg.teacher.logits_dir:
    from guide_jax.train import teacher_cache
    from guide_jax import paths
    teacher_top_k = teacher_cache.read_manifest(
        paths.workdir_path(cfg.teacher.logits_dir))['top_k']
  compiled, compile_s = compile_step(cfg, t_model, devices, teacher_top_k)
  mem = compiled.memory_analysis()
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
           - mem.alias_size_in_bytes)
  tokens = cfg.data.global_batch_size * cfg.data.seq_len
  model_flops = tokens * (flops.train_flops_per_token(cfg.model, cfg.data.seq_len) +
                          (0 if teacher_top_k else
                           flops.forward_flops_per_token(t_model, cfg.data.seq_len)))
  # XLA's cost analysis of the scanned step counts each loop body once (one block per
  # stack): reported as is. whole_step_cost counts every block, but XLA can still only
  # miss work: loops it adds itself (likely the windowed einsums of FSDP matmuls) count
  # once too. At 1B scale its whole-step FLOPs are ~4x below the model's; at test sizes
  # they are ~1.1x above (remat, softmax). So the roofline takes the larger of the model's
  # and XLA's FLOPs at the chip's peak, and XLA's bytes accessed at the HBM bandwidth,
  # whichever is slowest: every term is a lower bound on step time (perfect overlap, no
  # collective cost), so it is one too, and its MFU an upper bound.
  xla_flops, xla_bytes = _xla_cost(compiled)
  flops_per_device = model_flops / len(devices)
  step_flops, step_bytes = (whole_step_cost(cfg, t_model, devices, teacher_top_k) if whole_step
                            else (0.0, 0.0))
  compute_s = max(flops_per_device, step_flops) / peak
  memory_s = step_bytes / bandwidth
  roofline_s = max(compute_s, memory_s)
  from guide_jax.models import attention
  return {
      'topology': topology, 'num_slices': num_slices, 'devices': len(devices),
      'device_kind': devices[0].device_kind,
      # the kernels the step's self-attentions run (model.attention_kernel, resolved)
      'attention_kernel': attention.choose(cfg.model, cfg.data.seq_len, 'tpu'),
      'teacher_attention_kernel': attention.choose(t_running, cfg.data.seq_len, 'tpu'),
      'teacher_logits_top_k': teacher_top_k,  # 0: the teacher runs in the step
      'compile_s': compile_s,
      'per_device': {'argument_bytes': mem.argument_size_in_bytes,
                     'output_bytes': mem.output_size_in_bytes,
                     'temp_bytes': mem.temp_size_in_bytes,
                     'alias_bytes': mem.alias_size_in_bytes,
                     'total_bytes': total, 'hbm_bytes': hbm,
                     'xla_flops_loop_bodies_once': xla_flops,
                     'xla_bytes_accessed_loop_bodies_once': xla_bytes,
                     'xla_flops_whole_step': step_flops if whole_step else None,
                     'xla_bytes_accessed_whole_step': step_bytes if whole_step else None},
      'fits': total <= hbm,
      # the figures to compare run to run, in GiB per chip
      'per_chip_gib': total / 2**30, 'temporaries_gib': mem.temp_size_in_bytes / 2**30,
      'capacity_gib': hbm / 2**30,
      'model_flops_per_step': model_flops,
      'roofline_step_s': roofline_s,
      'roofline_bound_by': 'compute' if compute_s >= memory_s else 'memory',
      'roofline_mfu': flops_per_device / (peak * roofline_s),
      'tokens_per_step': tokens,
  }


def advice(cfg) -> str:
  tips = []
  if cfg.mesh.fsdp != -1:
    tips.append('shard parameters over more chips (mesh.fsdp=-1)')
  if cfg.model.remat in ('none', 'dots_saveable'):
    tips.append("rematerialise more (model.remat='dots' or 'full')")
  tips.append('fewer rows per chip (raise train.grad_accum or lower data.global_batch_size)')
  if cfg.teacher.dtype != 'bfloat16':
    tips.append("store the teacher in bfloat16 (teacher.dtype='bfloat16')")
  tips.append('or a larger slice (--topology)')
  return '; '.join(tips)


def define_flags() -> None:
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'A distillation config.')
  flags.DEFINE_string('topology', '', "e.g. v5p:4x4x4; default: the config's `topology`.")
  flags.DEFINE_bool('whole_step', True, "Roofline with the whole step's XLA FLOPs and bytes "
                    '(three more small compiles); false: model FLOPs only, a compute bound.')
  flags.DEFINE_enum('attention_kernel', '', ['', 'auto', 'xla', 'splash'],
                    "Sets model.attention_kernel and teacher.attention_kernel (to compare "
                    "kernels); '' keeps the config's.")
  flags.DEFINE_integer('num_slices', 1, 'Compile for this many slices of --topology joined '
                       'over DCN (set mesh.dcn_data / mesh.dcn_fsdp to use them).')
  flags.DEFINE_integer('teacher_logits_top_k', 0, 'Compile the step that reads a '
                       'teacher-logits cache of this k instead of running the teacher '
                       '(default: the k of teacher.logits_dir, if the config names one).')
  flags.mark_flag_as_required('config')


def main(argv):
  del argv
  cli.run(_main)


def _main() -> int:
  from ml_collections import config_flags
  from guide_jax import config as config_lib
  from guide_jax import experiment_file
  f = flags.FLAGS
  cfg = cli.config_value(f['config'])
  topology = f.topology or cfg.get('topology', '')
  if not topology:
    raise config_lib.ConfigError('no --topology and the config has no `topology` field; '
                                 'pass --topology=v5p:4x4x4 (or similar)')
  module = experiment_file.load_module(config_flags.get_config_filename(f['config']).split(':')[0])
  import jax
  try:
    r = report(cfg, module, topology, f.whole_step, f.attention_kernel,
               f.teacher_logits_top_k, f.num_slices)
  except ValueError as e:
    if isinstance(e, config_lib.ConfigError):
      raise
    raise config_lib.ConfigError(str(e)) from None
  except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses what cannot fit
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    reason = str(e).split('RESOURCE_EXHAUSTED: ')[-1].splitlines()[0]
    print(f'error: does not fit {topology}: {reason} {advice(cfg)}', file=sys.stderr)
    return 1
  d, gib = r['per_device'], 2**30
  teacher = (f'teacher from a top-{r["teacher_logits_top_k"]} logits cache'
             if r['teacher_logits_top_k'] else f'teacher {r["teacher_attention_kernel"]}')
  slices = f'{r["num_slices"]} x ' if r['num_slices'] > 1 else ''
  print(f'{slices}{topology}: {r["devices"]} x {r["device_kind"]}; compiled in {r["compile_s"]:.1f}s; '
        f'attention: student {r["attention_kernel"]}, {teacher}')
  print(f'per chip: arguments {d["argument_bytes"] / gib:.2f} GiB, temporaries '
        f'{d["temp_bytes"] / gib:.2f} GiB, outputs {d["output_bytes"] / gib:.2f} GiB '
        f'(aliased {d["alias_bytes"] / gib:.2f}), total {d["total_bytes"] / gib:.2f} of '
        f'{d["hbm_bytes"] / gib:.1f} GiB HBM')
  print(f'model FLOPs per step {r["model_flops_per_step"] / 1e15:.2f} PFLOP '
        f'({r["model_flops_per_step"] / r["devices"] / 1e12:.1f} TFLOP per chip); XLA, loop '
        f'bodies once: {d["xla_flops_loop_bodies_once"] / 1e12:.2f} TFLOP, '
        f'{d["xla_bytes_accessed_loop_bodies_once"] / 1e9:.1f} GB per chip')
  if d['xla_flops_whole_step'] is not None:
    print(f'XLA, whole step: {d["xla_flops_whole_step"] / 1e12:.1f} TFLOP, '
          f'{d["xla_bytes_accessed_whole_step"] / 1e9:.1f} GB accessed per chip')
  print(f'roofline ({r["roofline_bound_by"]}-bound): step >= {r["roofline_step_s"]:.3f}s, '
        f'MFU <= {r["roofline_mfu"]:.1%}, '
        f'{r["tokens_per_step"] / r["roofline_step_s"]:,.0f} tokens/s at best')
  print(json.dumps(r))
  if not r['fits']:
    print(f'error: does not fit {topology}: {d["total_bytes"] / gib:.2f} GiB > '
          f'{d["hbm_bytes"] / gib:.1f} GiB per chip; {advice(cfg)}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
