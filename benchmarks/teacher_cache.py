"""What the offline teacher-logits cache costs and saves (issue 26), three measurements:

  python benchmarks/teacher_cache.py speed [rounds]
      The KD train step online (teacher forward inside) against the same step reading a
      k = 64 cache, the teacher's forward alone, and the cache build's per-step work (top-k
      over the vocabulary, copy to host, encode), interleaved round by round, on the kd
      arm of experiments/study_cached.py (student d 32, teacher d 64, vocabulary 1,024,
      batch 16 x 128), one CPU device; plus the storage table, bytes per token for each k.
  python benchmarks/teacher_cache.py memory
      A big teacher (d 1,024, 12 blocks, vocabulary 32,768: 268M parameters) and a small
      student (d 256, 4 blocks) on an 8-device CPU mesh (fsdp 8): the compiled online and
      cached train steps' per-device argument and temporary bytes (XLA's memory analysis).
  python benchmarks/teacher_cache.py accuracy STUDY_DIR [batches]
      The study's teacher and its kd/seed0 student: the mean per-token KD of full-vocabulary
      forward KL against the cached k + 1 bucket loss for k = 16, 64, 256 and the whole
      vocabulary, over the first train batches of seed 0.

Every timing prints the CPU model and its measured float32 matmul peak first.
"""

import statistics
import sys
import time

from guide_jax import cli  # noqa: F401  the commands' XLA:CPU flags
import jax
import jax.numpy as jnp
import numpy as np

from guide_jax import config as config_lib
from guide_jax import losses, sharding
from guide_jax.data import pipeline
from guide_jax.models import transformer
from guide_jax.train import flops, optimizer, steps, teacher_cache


def cpu_line() -> str:
  cpu = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo')
              if line.startswith('model name')), 'unknown CPU')
  return (f'{cpu}; float32 matmul peak {flops.measured_matmul_peak("float32") / 1e9:.0f} '
          f'GFLOP/s; {jax.device_count()} device(s)')


def study_config():
  cfg = config_lib.load_experiment_module('study_cached').get_config()
  cfg.guide.init = 'none'  # the kd arm
  return cfg


def storage_table(seq_len: int, vocab: int) -> None:
  print('\nstorage, bytes per token (top-k logits + ids + lse, rest, target logit):')
  print('| k | float32 logits | bfloat16 logits |')
  print('|---|---|---|')
  for k in (16, 64, 256, vocab):
    f32, bf16 = (teacher_cache.Layout(seq_len, k, vocab, d).bytes_per_token
                 for d in ('float32', 'bfloat16'))
    print(f'| {k} | {f32:.0f} | {bf16:.0f} |')


def speed(rounds: int) -> None:
  print(cpu_line())
  cfg = study_config()
  student, teacher = cfg.model, cfg.teacher.pretrain.model
  b, s, k = cfg.data.global_batch_size, cfg.data.seq_len, 64
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, student.vocab_size, (b, s + 1)).astype(np.int32)
  batch = {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:],
           'positions': np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy(),
           'segment_ids': np.ones((b, s), np.int32), 'loss_weights': np.ones((b, s), np.float32)}
  with jax.set_mesh(jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])):
    tp = transformer.init_params(teacher, jax.random.key(1))
    build = jax.jit(teacher_cache.top_k_fn(teacher, k, 1.0, 0))
    cached = jax.device_get(build(tp, batch))
    layout = teacher_cache.Layout(s, k, teacher.vocab_size, 'float32')
    loss = losses.DistillLoss(cfg.loss, cfg.train.steps, cfg.train.z_loss)
    tx = optimizer.make(cfg.train)
    state0 = steps.new_state(transformer.init_params(student, jax.random.key(0)), tx)

    def train_step(teacher_cfg):
      objective = steps.distill_objective(student, teacher_cfg, loss, None, 0)
      return jax.jit(steps.make_train_step(objective, tx, 1, lambda _: 1e-3))

    online_step, cached_step = train_step(teacher), train_step(None)
    lm_step = jax.jit(steps.make_train_step(
        steps.lm_objective(student, cfg.train.z_loss), tx, 1, lambda _: 1e-3))
    cached_batch = {**batch, **cached}
    forward = jax.jit(lambda p, x: transformer.bind(teacher, p)(
        x['inputs'], x['positions'], x['segment_ids']))

    def build_step():  # what the build does per step, but the file write
      out = jax.device_get(build(tp, batch))
      return [layout.encode(out, r) for r in range(b)]

    work = {
        'CE-only step (no KD)': lambda: lm_step(state0, batch),
        'online KD step': lambda: online_step(state0, batch, tp, {}),
        'cached KD step': lambda: cached_step(state0, cached_batch, {}, {}),
        'teacher forward': lambda: forward(tp, batch),
        'cache build step': build_step,
    }
    for fn in work.values():
      jax.block_until_ready(fn())
    times = {name: [] for name in work}
    for r in range(rounds):
      order = list(work) if r % 2 == 0 else list(reversed(work))
      for name in order:
        start = time.perf_counter()
        jax.block_until_ready(work[name]())
        times[name].append(time.perf_counter() - start)
  med = {n: statistics.median(t) for n, t in times.items()}
  print(f'\nbatch {b} x {s} = {b * s} tokens; median of {rounds} interleaved rounds')
  print('| work | ms | tokens/s |')
  print('|---|---|---|')
  for name, t in med.items():
    print(f'| {name} | {t * 1e3:.2f} | {b * s / t:,.0f} |')
  print(f'\nonline / cached KD step time: {med["online KD step"] / med["cached KD step"]:.2f}x')
  base = med['CE-only step (no KD)']
  print(f'KD\'s cost over the CE-only step: online +{(med["online KD step"] - base) * 1e3:.1f} '
        f'ms (the teacher forward alone {med["teacher forward"] * 1e3:.1f} ms), cached '
        f'+{(med["cached KD step"] - base) * 1e3:.1f} ms')
  print(f'cache build step / teacher forward: '
        f'{med["cache build step"] / med["teacher forward"]:.2f}x')
  storage_table(s, teacher.vocab_size)


def memory() -> None:
  jax.config.update('jax_num_cpu_devices', 8)
  cfg = config_lib.base_config()
  cfg.mesh.update(dict(data=1, fsdp=8, tensor=1))
  cfg.data.update(dict(seq_len=512, global_batch_size=8))
  student = config_lib.model_config()
  student.update(dict(vocab_size=32768, d_model=256, n_layers=4, n_heads=4, n_kv_heads=4,
                      head_dim=64, mlp_dim=1024, max_len=512, position='rope',
                      tie_embeddings=False))
  teacher = config_lib.model_config()
  teacher.update(dict(student.to_dict(), d_model=1024, n_layers=12, n_heads=16, n_kv_heads=16,
                      mlp_dim=4096))
  count = lambda m: sum(x.size for x in jax.tree.leaves(transformer.abstract_params(m)))
  print(f'teacher {count(teacher) / 1e6:.0f}M parameters, student {count(student) / 1e6:.1f}M; '
        f'batch 8 x 512, fsdp 8 on 8 CPU devices; per device:')
  mesh, rules = sharding.make_mesh(cfg.mesh), tuple(cfg.logical_rules)
  b, s, k = 8, 512, 64
  cfg.loss.kd = losses.weight_config(1.0)
  loss = losses.DistillLoss(cfg.loss, 100)
  tx = optimizer.make(cfg.train)
  print('| step | arguments MiB | temporaries MiB | teacher params among the arguments MiB |')
  print('|---|---|---|---|')
  with jax.set_mesh(mesh), sharding.use_rules(rules):
    abstract_s, shard_s = transformer.abstract_params_and_shardings(student, mesh, rules)
    abstract_t, shard_t = transformer.abstract_params_and_shardings(teacher, mesh, rules)
    state_sh = steps.state_shardings(shard_s, tx, abstract_s, mesh)
    state = sharding.abstract(jax.eval_shape(lambda p: steps.new_state(p, tx), abstract_s),
                              state_sh)
    bs = sharding.batch_sharding(mesh, rules)
    field = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=bs)
    batch = {n: field((b, s), jnp.float32 if n == 'loss_weights' else jnp.int32)
             for n in ('inputs', 'targets', 'positions', 'segment_ids', 'loss_weights')}
    cached = teacher_cache.abstract_fields(b, s, k, bs)
    teacher_params = sharding.abstract(abstract_t, shard_t)
    per_device_teacher = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract_t)) / 8
    for name, teacher_cfg, args in (
        ('online', teacher, (state, batch, teacher_params, {})),
        ('cached k=64', None, (state, {**batch, **cached}, {}, {}))):
      objective = steps.distill_objective(student, teacher_cfg, loss, None, 256)
      step = steps.jit_train_step(objective, tx, cfg.train, state_sh)
      m = step.lower(*args).compile().memory_analysis()
      held = per_device_teacher if teacher_cfg is not None else 0
      print(f'| {name} | {m.argument_size_in_bytes / 2**20:.1f} | '
            f'{m.temp_size_in_bytes / 2**20:.1f} | {held / 2**20:.1f} |')


def accuracy(study_dir: str, n_batches: int) -> None:
  from etils import epath
  from guide_jax.train import teacher as teacher_lib
  cfg = study_config()
  cfg.teacher.pretrain = type(cfg.teacher.pretrain)()
  cfg.teacher.checkpoint = f'{study_dir}/teacher'
  mesh, rules = sharding.make_mesh(cfg.mesh), tuple(cfg.logical_rules)
  with jax.set_mesh(mesh), sharding.use_rules(rules):
    teacher = teacher_lib.load(epath.Path(cfg.teacher.checkpoint), mesh, rules, 'float32')
    student = teacher_lib.load(epath.Path(f'{study_dir}/kd/seed0'), mesh, rules, 'float32')
    teacher_lib.check_vocabulary(cfg, teacher)
    data = pipeline.build(cfg)
    vocab = teacher.model.vocab_size
    ks = (16, 64, 256, vocab)

    @jax.jit
    def measure(tp, sp, batch):
      args = (batch['inputs'], batch['positions'], batch['segment_ids'])
      zt = transformer.bind(teacher.model, tp)(*args)
      zs = transformer.bind(student.model, sp)(*args)
      full = losses.kd_per_token(zs, zt, 1.0)
      out = {'full': full}
      for k in ks:
        fields = teacher_cache.cached_fields(zt, batch['targets'], k, 1.0)
        out[f'k{k}'] = losses.sparse_kd_per_token(zs, fields, 1.0)
        out[f'mass{k}'] = jnp.exp(jax.nn.logsumexp(fields['teacher_logits'], -1)
                                  - fields['teacher_lse'])
      return out

    rows = {key: [] for key in ['full', *(f'k{k}' for k in ks), *(f'mass{k}' for k in ks)]}
    for step in range(n_batches):
      local = data.train.batch_at(step)
      out = jax.device_get(measure(teacher.params, student.params,
                                   sharding.global_batch_from_local(local, mesh, rules)))
      for key, v in out.items():
        rows[key].append(np.asarray(v).ravel())
  full = np.concatenate(rows['full'])
  print(f'{full.size} tokens (seed 0, steps 0..{n_batches - 1}); teacher {study_dir}/teacher, '
        f'student {study_dir}/kd/seed0; forward KL at temperature 1')
  print(f'full-vocabulary KD: mean {full.mean():.5f} nats/token')
  print('| k | teacher mass in top-k | cached KD mean | mean (cached - full) | '
        'mean abs difference | relative |')
  print('|---|---|---|---|---|---|')
  for k in ks:
    sparse = np.concatenate(rows[f'k{k}'])
    mass = np.concatenate(rows[f'mass{k}']).mean()
    diff = sparse - full
    print(f'| {k} | {mass:.4f} | {sparse.mean():.5f} | {diff.mean():+.2e} | '
          f'{np.abs(diff).mean():.2e} | {diff.mean() / full.mean():+.2%} |')


if __name__ == '__main__':
  what = sys.argv[1]
  if what == 'speed':
    speed(int(sys.argv[2]) if len(sys.argv) > 2 else 20)
  elif what == 'memory':
    memory()
  elif what == 'accuracy':
    accuracy(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 8)
  else:
    raise SystemExit(f'unknown measurement {what!r}: speed, memory or accuracy')
