"""The fused output layer's step-time cost against the unfused one on this CPU (issue 13:
at most 5%): the LM and the KD step of experiments/bench_peer.py compiled with
loss.chunk_len 0 (unfused), 64 and 128, all timed in one process, round by round.

  python benchmarks/fused_cost.py [rounds] [d512]     # ~5 minutes alone at d 256
"""
import statistics
import sys
import time

from guide_jax import cli  # noqa: F401  the commands' XLA:CPU flags
import jax

from guide_jax import bench, losses, saved_model, sharding
from guide_jax import config as config_lib
from guide_jax.models import transformer
from guide_jax.train import optimizer, steps
from guide_jax.train import teacher as teacher_lib

CHUNKS = {'unfused': 0, 'chunk 64': 64, 'chunk 128': 128}


def main(rounds: int, variant: str | None) -> None:
  cfg = config_lib.load_experiment_module('bench_peer').get_config(variant)
  student = cfg.model
  teacher = saved_model.runtime_model(teacher_lib.model_config(cfg), cfg.teacher.dtype)
  mesh, rules = sharding.make_mesh(cfg.mesh), tuple(cfg.logical_rules)
  with jax.set_mesh(mesh), sharding.use_rules(rules):
    shapes, param_shardings = transformer.abstract_params_and_shardings(student, mesh, rules)
    teacher_params = jax.jit(lambda k: transformer.init_params(teacher, k))(jax.random.key(1))
    batch = sharding.global_batch_from_local(bench.synthetic_batch(cfg), mesh, rules)
    tx = optimizer.make(cfg.train)
    state_shardings = steps.state_shardings(param_shardings, tx, shapes, mesh)
    init = jax.jit(lambda k: steps.new_state(transformer.init_params(student, k), tx),
                   out_shardings=state_shardings)
    compiled, states = {}, {}
    for arm, w_kd in (('LM', 0.0), ('KD', 1.0)):
      loss_cfg = cfg.loss.copy_and_resolve_references()
      loss_cfg.kd, loss_cfg.match = losses.weight_config(w_kd), losses.weight_config(0.0)
      loss = losses.DistillLoss(loss_cfg, cfg.train.steps)
      extra = (teacher_params if w_kd else None, None)
      for name, chunk in CHUNKS.items():
        objective = steps.distill_objective(student, teacher, loss, None, chunk)
        step = steps.jit_train_step(objective, tx, cfg.train, state_shardings)
        key = (arm, name)
        states[key] = init(jax.random.key(0))
        compiled[key] = (step.lower(states[key], batch, *extra).compile(), extra)
        states[key], _ = compiled[key][0](states[key], batch, *extra)  # warm-up
        jax.block_until_ready(states[key])
    times = {key: [] for key in compiled}
    for _ in range(rounds):
      for key, (step, extra) in compiled.items():
        start = time.perf_counter()
        states[key], metrics = step(states[key], batch, *extra)
        jax.block_until_ready((states[key], metrics))
        times[key].append(time.perf_counter() - start)
  for arm in ('LM', 'KD'):
    base = statistics.median(times[(arm, 'unfused')])
    for name in CHUNKS:
      t = statistics.median(times[(arm, name)])
      print(f'{arm} {name:<10} {t * 1e3:8.1f} ms/step  {100 * (t / base - 1):+5.1f}% vs unfused')


if __name__ == '__main__':
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 7, sys.argv[2] if len(sys.argv) > 2 else None)
