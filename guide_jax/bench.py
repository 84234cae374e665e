"""Benchmark the student train step of each GUIDE arm, side by side in one process.

  python -m guide_jax.bench --config=experiments/bench_cpu.py [--steps=10]
  python -m guide_jax.bench --config=experiments/bench_cpu.py --compile_depths=4,32
  python -m guide_jax.bench --project=256000,2304,1152     # guide.project, Gemma-2B table

Arms (one compiled train step each, on the config's student, mesh and batch):
  baseline        random init, CE
  guide           GUIDE init (projected from the teacher), CE: the same step as baseline
  guide_match     GUIDE init, CE + MATCH
  kd              random init, CE + KD (teacher forward in the step)
  guide_match_kd  GUIDE init, CE + KD + MATCH
and, only when --arms names them (loss.on_policy's prompt_len and new_tokens, or half the
sequence each when the config leaves them 0; train/on_policy.py):
  on_policy       random init, every row the student's sample, graded by the teacher
  mixed           random init, half the rows on-policy, half CE + KD on data
Their step is the sampling (one jit, timed apart as sample_time_s) and then the train step.
The teacher is the config's teacher architecture (guide_jax.train.teacher.model_config)
with random weights: timing does not depend on its values. Batches
are synthetic. After a warm-up step, the arms run interleaved, round by round, so that
noise from a shared machine hits all of them alike; each arm reports its median step time.

MFU counts matmul FLOPs (attention included, guide_jax.train.flops): the student's
forward+backward and, for KD arms, the teacher's forward, against a matmul peak measured
here, in the model's compute dtype. The last line printed is one JSON object with all
numbers. Imports no TensorFlow (runs on accelerator images without it).
"""

from __future__ import annotations

import json
import pathlib
import statistics
import time

from absl import app, flags

from guide_jax import cli

ARMS = {  # arm: (GUIDE init, KD weight, MATCH weight)
    'baseline': (False, 0.0, 0.0),
    'guide': (True, 0.0, 0.0),
    'guide_match': (True, 0.0, 1.0),
    'kd': (False, 1.0, 0.0),
    'guide_match_kd': (True, 1.0, 1.0),
    # The baseline without the non-finite guard (steps.make_train_step): its ratio to the
    # baseline is what the guard costs.
    'baseline_unguarded': (False, 0.0, 0.0),
}
ON_POLICY_ARMS = {'on_policy': 1.0, 'mixed': 0.5}  # arm: loss.on_policy.fraction
# Every arm's (GUIDE init, KD weight, MATCH weight); the on-policy ones start at random.
WEIGHTS = {**ARMS, **{arm: (False, 1.0, 0.0) for arm in ON_POLICY_ARMS}}


# Which PyTorch peer step (benchmarks/torch_peer.py) each arm is compared with, and the
# name of the comparison in the JSON's "peer" object.
PEER_STEPS = {'baseline': 'lm', 'kd': 'kd'}


def load_peer():
  """benchmarks/torch_peer.py, loaded by path: the package never imports torch itself."""
  from guide_jax import config as config_lib
  from guide_jax import experiment_file
  path = pathlib.Path(__file__).resolve().parent.parent / 'benchmarks' / 'torch_peer.py'
  try:
    return experiment_file.load_module(path)
  except ImportError as e:
    raise config_lib.ConfigError(f'--peer needs torch ({e}); pip install -e ".[hf-parity]" '
                                 f'(the CPU torch: see the Makefile)') from None


def synthetic_batch(cfg) -> dict:
  from guide_jax.data import pipeline
  return pipeline.synthetic_batch(cfg.model.vocab_size, cfg.data.global_batch_size,
                                  cfg.data.seq_len)


def _memory(compiled) -> dict:
  """Bytes from XLA's memory analysis of the compiled step (None where not reported)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    m = None
  if m is None:
    return {'peak_bytes': None}
  peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)
  return {'peak_bytes': int(peak), 'temp_bytes': int(m.temp_size_in_bytes),
          'argument_bytes': int(m.argument_size_in_bytes)}


def run_arms(cfg, rounds: int, arms: list[str], log=print, peer=None) -> dict:
  """Compile every arm, warm it up, then time `rounds` interleaved rounds. `peer`: the
  module benchmarks/torch_peer.py, whose PyTorch steps of the same model (lm for the
  baseline arm, kd for kd) are timed right after guide_jax's in each round."""
  import jax
  from guide_jax import config as config_lib
  from guide_jax import guide, losses, sharding
  from guide_jax.models import attention, transformer
  from guide_jax.train import flops, optimizer, steps
  from guide_jax.train import teacher as teacher_lib

  platform = jax.default_backend()
  config_lib.validate(cfg, jax.device_count(), jax.process_count(), platform,
                      sharding.num_slices(jax.devices()))
  t_model = teacher_lib.running_model(cfg, teacher_lib.model_config(cfg), platform)
  s_model = cfg.model
  kernels = {'student': attention.choose(s_model, cfg.data.seq_len, platform),
             'teacher': attention.choose(t_model, cfg.data.seq_len, platform)}
  guide.check_compatible(t_model, s_model, cfg.guide)
  mesh = sharding.make_mesh(cfg.mesh)
  rules = tuple(cfg.logical_rules)
  tokens = cfg.data.global_batch_size * cfg.data.seq_len
  # MFU's denominator: the chip's datasheet peak where it is known (GPU/TPU: the usual
  # definition), else a matmul measured here (CPU). The measured one is reported either way.
  measured_peak = flops.measured_matmul_peak(s_model.dtype)
  on_cpu = jax.devices()[0].platform == 'cpu'
  peak, peak_source = ((measured_peak, 'measured matmul') if on_cpu else
                       flops.device_peak_flops(s_model.dtype, cfg.train.peak_flops))
  student_flops = flops.train_flops_per_token(s_model, cfg.data.seq_len) * tokens
  teacher_flops = flops.forward_flops_per_token(t_model, cfg.data.seq_len) * tokens
  log(f'devices {jax.device_count()} ({jax.devices()[0].device_kind}); matmul peak '
      f'{peak / 1e9:.1f} GFLOP/s ({s_model.dtype}, {peak_source}; measured '
      f'{measured_peak / 1e9:.1f}); student {student_flops / 1e9:.2f} '
      f'GFLOP/step (train), teacher {teacher_flops / 1e9:.2f} GFLOP/step (forward); '
      f'attention: student {kernels["student"]}, teacher {kernels["teacher"]}')

  with jax.set_mesh(mesh), sharding.use_rules(rules):
    _, t_shardings = transformer.abstract_params_and_shardings(t_model, mesh, rules)
    s_shapes, p_shardings = transformer.abstract_params_and_shardings(s_model, mesh, rules)
    teacher_params = jax.jit(lambda k: transformer.init_params(t_model, k),
                             out_shardings=t_shardings)(jax.random.key(1))
    guide_cfg = cfg.guide.copy_and_resolve_references()
    if guide_cfg.init == 'none':  # the guide arms still need theta_hat
      guide_cfg.init = 'blocks'
    theta_hat, layers, _ = guide.projected_teacher(teacher_params, t_model, s_model,
                                                   guide_cfg, p_shardings)
    batch = sharding.global_batch_from_local(synthetic_batch(cfg), mesh, rules)
    tx = optimizer.make(cfg.train)
    state_shardings = steps.state_shardings(p_shardings, tx, s_shapes, mesh)

    peers = {}
    if peer is not None:
      peer_steps = peer.make_steps(s_model, t_model, cfg.train, synthetic_batch(cfg))
      peers = {arm: peer_steps[kind] for arm, kind in PEER_STEPS.items() if arm in arms}
      for arm, step in peers.items():
        step()  # warm-up
    compiled, states, results, samplers = {}, {}, {}, {}
    for arm in arms:
      use_guide, w_kd, w_match = WEIGHTS[arm]
      loss_cfg = cfg.loss.copy_and_resolve_references()
      loss_cfg.kd = losses.weight_config(w_kd)
      loss_cfg.match = losses.weight_config(w_match)
      if arm in ON_POLICY_ARMS:
        loss_cfg.on_policy, samplers[arm] = on_policy_sampler(cfg, ON_POLICY_ARMS[arm],
                                                              p_shardings, mesh, rules)
      loss = losses.DistillLoss(loss_cfg, cfg.train.steps)
      objective = steps.distill_objective(
          s_model, t_model, loss, layers,
          losses.resolve_chunk_len(cfg.loss.chunk_len, cfg.data.seq_len))
      step_fn = steps.jit_train_step(objective, tx, cfg.train, state_shardings,
                                     guard_nonfinite=arm != 'baseline_unguarded')

      def init(key, use_guide=use_guide):
        params = transformer.init_params(s_model, key)
        if use_guide:
          params = guide.apply(params, theta_hat, layers)
        return steps.new_state(params, tx)
      states[arm] = jax.jit(init, out_shardings=state_shardings)(jax.random.key(0))
      # the sampling compiled and warmed up, then the step on its rows
      arm_batch = samplers[arm](states[arm], batch) if arm in samplers else batch
      start = time.perf_counter()
      compiled[arm] = step_fn.lower(states[arm], arm_batch, teacher_params, theta_hat).compile()
      compile_s = time.perf_counter() - start
      states[arm], _ = compiled[arm](states[arm], arm_batch, teacher_params,
                                     theta_hat)  # warm-up
      jax.block_until_ready(states[arm])
      results[arm] = {'compile_s': compile_s, **_memory(compiled[arm]), 'times': []}
      log(f'{arm}: compiled in {compile_s:.1f}s')

    for _ in range(rounds):  # interleaved rounds
      for arm in arms:
        start = time.perf_counter()
        arm_batch = batch
        if arm in samplers:  # as the trainer does: sample with this step's params
          arm_batch = jax.block_until_ready(samplers[arm](states[arm], batch))
          results[arm].setdefault('sample_times', []).append(time.perf_counter() - start)
        states[arm], metrics = compiled[arm](states[arm], arm_batch, teacher_params,
                                             theta_hat)
        jax.block_until_ready((states[arm], metrics))
        results[arm]['times'].append(time.perf_counter() - start)
        if arm in peers:
          start = time.perf_counter()
          peers[arm]()
          results[arm].setdefault('peer_times', []).append(time.perf_counter() - start)

  # The matmul was measured on one device. Fake CPU devices share the host's cores, so
  # there the host's peak is the budget of all of them; real chips each have their own.
  n_dev = jax.device_count()
  total_peak = peak * (1 if jax.devices()[0].platform == 'cpu' else n_dev)
  out = {}
  for arm in arms:
    r = results.pop(arm)
    step_time = statistics.median(r.pop('times'))
    arm_flops = student_flops + (teacher_flops if WEIGHTS[arm][1] else 0.0)
    peer_times = r.pop('peer_times', None)
    sample_times = r.pop('sample_times', None)
    out[arm] = {'step_time_s': step_time, 'tokens_per_sec': tokens / step_time,
                'mfu': arm_flops / (total_peak * step_time),
                'mfu_student': student_flops / (total_peak * step_time), **r}
    if sample_times:  # MFU counts the train step's FLOPs; the sampling's time is in it
      out[arm]['sample_time_s'] = statistics.median(sample_times)
    if peer_times:
      peer_time = statistics.median(peer_times)
      out[arm]['peer'] = {'torch_tokens_per_sec': tokens / peer_time,
                          'jax_tokens_per_sec': tokens / step_time,
                          'ratio': peer_time / step_time,  # > 1: guide_jax is faster
                          'torch_mfu': arm_flops / (total_peak * peer_time)}
  return {'device_kind': jax.devices()[0].device_kind, 'devices': n_dev,
          'dtype': s_model.dtype, 'attention_kernel': kernels, 'peak_flops': peak,
          'peak_source': peak_source,
          'measured_matmul_peak': measured_peak, 'tokens_per_step': tokens,
          'student_train_flops_per_step': student_flops,
          'teacher_forward_flops_per_step': teacher_flops,
          'kd_theory_ratio': 1.0 + teacher_flops / student_flops, 'arms': out}


def on_policy_sampler(cfg, fraction: float, param_shardings, mesh, rules):
  """(the arm's loss.on_policy, the trainer's jitted sample step (train/on_policy.py)
  called as (state, batch) -> the batch with the student's rows, at the state's step)."""
  import jax
  from guide_jax import sharding
  from guide_jax.data import packing
  from guide_jax.train import on_policy
  arm_cfg = cfg.copy_and_resolve_references()
  op = arm_cfg.loss.on_policy
  op.fraction = fraction
  if not op.prompt_len and not op.new_tokens:
    op.prompt_len = op.new_tokens = cfg.data.seq_len // 2
  rows = sharding.batch_sharding(mesh, rules)
  step = jax.jit(on_policy.make_sample_step(arm_cfg, eos_id=-1),  # synthetic: no EOS
                 in_shardings=(param_shardings, {k: rows for k in packing.FIELDS},
                               sharding.replicated(mesh)))

  def sample(state, batch):
    return step(state['params'], batch, state['step'])
  return op, sample


def compile_times(cfg, depths: list[int]) -> dict[int, float]:
  """Seconds to lower+compile the baseline student train step at each depth (abstract
  inputs: nothing is allocated)."""
  import jax
  from guide_jax import sharding
  from guide_jax.models import transformer
  from guide_jax.train import optimizer, steps
  mesh = sharding.make_mesh(cfg.mesh)
  rules = tuple(cfg.logical_rules)
  out = {}
  with jax.set_mesh(mesh), sharding.use_rules(rules):
    for depth in depths:
      m = cfg.model.copy_and_resolve_references()
      m.n_layers = depth
      tx = optimizer.make(cfg.train)
      abstract, param_shardings = transformer.abstract_params_and_shardings(m, mesh, rules)
      shardings = steps.state_shardings(param_shardings, tx, abstract, mesh)
      state = sharding.abstract(jax.eval_shape(lambda p: steps.new_state(p, tx), abstract),
                                shardings)
      batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                           synthetic_batch(cfg))
      step = steps.jit_train_step(steps.lm_objective(m, 0.0), tx, cfg.train, shardings)
      start = time.perf_counter()
      step.lower(state, batch).compile()
      out[depth] = time.perf_counter() - start
  return out


def _rss(field: str) -> int:
  """VmRSS / VmHWM of this process in bytes (Linux)."""
  for line in pathlib.Path('/proc/self/status').read_text().splitlines():
    if line.startswith(field + ':'):
      return int(line.split()[1]) * 1024
  raise OSError(f'/proc/self/status has no {field}')


def project_benchmark(vocab: int, d_teacher: int, d_student: int) -> dict:
  """Time and peak host memory of guide.project for a [vocab, d_teacher] table -> d_student
  (one teacher block of matching shape, so the embedding dominates). Memory is the peak
  resident size above what the process held before the teacher was created, in copies of
  the teacher table."""
  import jax
  from guide_jax import config as config_lib
  from guide_jax import guide
  from guide_jax.models import transformer
  t = config_lib.model_config()
  t.update(vocab_size=vocab, d_model=d_teacher, n_layers=1, n_heads=8, n_kv_heads=4,
           head_dim=256, mlp_dim=4 * d_teacher, position='rope', max_len=8)
  s = t.copy_and_resolve_references()
  s.update(d_model=d_student, n_heads=4, n_kv_heads=2, mlp_dim=4 * d_student)
  g = config_lib.guide_config()
  table_bytes = vocab * d_teacher * 4
  rss_before = _rss('VmRSS')
  teacher = jax.jit(lambda k: transformer.init_params(t, k))(jax.random.key(0))
  jax.block_until_ready(teacher)
  pathlib.Path('/proc/self/clear_refs').write_text('5')  # reset VmHWM to the current RSS
  project = jax.jit(lambda p: guide.project(p, t, s, g))
  start = time.perf_counter()
  guided, diag = project(teacher)
  jax.block_until_ready(guided)
  seconds = time.perf_counter() - start
  peak = _rss('VmHWM')
  return {'vocab': vocab, 'd_teacher': d_teacher, 'd_student': d_student,
          'seconds_incl_compile': seconds, 'table_bytes': table_bytes,
          'peak_bytes_above_start': peak - rss_before,
          'peak_copies_of_table': (peak - rss_before) / table_bytes,
          'explained_variance': float(diag['explained_variance'])}


def define_flags() -> None:
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'A distillation config (student + teacher).')
  flags.DEFINE_integer('steps', 10, 'Timed interleaved rounds (one step per arm each).')
  flags.DEFINE_list('arms', list(ARMS), 'Arms to run.')
  flags.DEFINE_list('compile_depths', [], 'Also compile the baseline step at these depths.')
  flags.DEFINE_list('project', [], 'vocab,d_teacher,d_student: benchmark guide.project only.')
  flags.DEFINE_bool('peer', False, 'Also time a plain PyTorch loop of the same model and '
                    'steps (benchmarks/torch_peer.py; needs torch), interleaved with '
                    'guide_jax\'s: the JSON gains "peer": {"lm": ..., "kd": ...}.')


def main(argv):
  del argv
  cli.run(_main)


def _main():
  from guide_jax import config as config_lib
  f = flags.FLAGS
  if f.project:
    vocab, d_t, d_s = (int(x) for x in f.project)
    result = {'project': project_benchmark(vocab, d_t, d_s)}
    p = result['project']
    print(f'guide.project {vocab}x{d_t} -> {d_s}: {p["seconds_incl_compile"]:.1f}s, peak '
          f'{p["peak_bytes_above_start"] / 2**30:.2f} GiB = {p["peak_copies_of_table"]:.2f} '
          f'copies of the {p["table_bytes"] / 2**30:.2f} GiB table')
    print(json.dumps(result))
    return
  if f.config is None:
    raise config_lib.ConfigError('pass --config=experiments/FILE.py (or --project=V,D_T,D_S)')
  unknown = set(f.arms) - set(WEIGHTS)
  if unknown:
    raise config_lib.ConfigError(f'--arms has unknown {sorted(unknown)}; choose from '
                                 f'{list(WEIGHTS)}')
  from guide_jax import guide
  try:
    result = run_arms(cli.config_value(f['config']), f.steps, list(f.arms),
                      peer=load_peer() if f.peer else None)
  except (guide.GuideError, ValueError) as e:
    if isinstance(e, config_lib.ConfigError):
      raise
    raise config_lib.ConfigError(str(e)) from None
  base = result['arms'].get('baseline')
  result['ratios'] = ({arm: r['step_time_s'] / base['step_time_s']
                       for arm, r in result['arms'].items()} if base else {})
  if f.compile_depths:
    result['compile_s_by_depth'] = compile_times(cli.config_value(f['config']),
                                                 [int(d) for d in f.compile_depths])
  print(f'{"arm":<16}{"step s":>9}{"tokens/s":>11}{"MFU":>8}{"compile s":>11}'
        f'{"peak MiB":>10}{"ratio":>8}')
  for arm, r in result['arms'].items():
    peak_mib = '-' if r['peak_bytes'] is None else f'{r["peak_bytes"] / 2**20:.0f}'
    print(f'{arm:<16}{r["step_time_s"]:>9.4f}{r["tokens_per_sec"]:>11.0f}{r["mfu"]:>8.1%}'
          f'{r["compile_s"]:>11.1f}{peak_mib:>10}{result["ratios"].get(arm, 0):>8.3f}')
  peer = {PEER_STEPS[arm]: r.pop('peer') for arm, r in result['arms'].items() if 'peer' in r}
  if peer:
    result['peer'] = peer
    for kind, p in peer.items():
      print(f'peer {kind}: guide_jax {p["jax_tokens_per_sec"]:,.0f} tokens/s, PyTorch '
            f'{p["torch_tokens_per_sec"]:,.0f} tokens/s: {p["ratio"]:.2f}x')
  print(f'KD theory ratio 1 + teacher fwd / student train = {result["kd_theory_ratio"]:.3f}')
  if 'compile_s_by_depth' in result:
    print('compile s by depth: ' + ', '.join(f'{d} layers {s:.1f}s' for d, s in
                                             result['compile_s_by_depth'].items()))
  print(json.dumps(result))


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
