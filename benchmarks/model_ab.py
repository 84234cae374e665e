"""The model's forward+backward from two versions of models/transformer.py, in one process,
interleaved round by round: does a change to the model code move CPU speed?

  git worktree add /tmp/before COMMIT
  python benchmarks/model_ab.py /tmp/before/guide_jax/models/transformer.py [rounds]

Loads the other file as a module of its own (it shares this checkout's guide_jax.sharding),
builds bench_peer.py's student (d 256, 4 blocks, batch 16 x 256, float32) from both with the
same parameters, checks they give the same loss, and prints the median time of a jitted
value_and_grad of the mean next-token cross-entropy for each, and their ratio (the file
against itself gives the noise floor), after the CPU model and its measured matmul peak.
"""

import importlib.util
import statistics
import sys
import time

from guide_jax import cli  # noqa: F401  the commands' XLA:CPU flags
import jax
import jax.numpy as jnp
import numpy as np

from guide_jax import config as config_lib
from guide_jax.models import transformer
from guide_jax.train import flops


def load(path):
  spec = importlib.util.spec_from_file_location('transformer_other', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main(path: str, rounds: int) -> None:
  cfg = config_lib.load_experiment_module('bench_peer').get_config()
  m, (b, s) = cfg.model, (cfg.data.global_batch_size, cfg.data.seq_len)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, m.vocab_size, (b, s + 1)))
  batch = {'inputs': tokens[:, :-1], 'positions': jnp.broadcast_to(jnp.arange(s), (b, s)),
           'segment_ids': jnp.ones((b, s), jnp.int32)}
  with jax.set_mesh(jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])):
    params = transformer.init_params(m, jax.random.key(0))
    steps = {}
    for name, module in (('other', load(path)), ('this', transformer)):
      def loss(p, module=module):
        logits = module.apply(m, p, batch)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None],
                                             axis=-1))
      steps[name] = jax.jit(jax.value_and_grad(loss))
      jax.block_until_ready(steps[name](params))
    a, b_ = (float(steps[n](params)[0]) for n in ('other', 'this'))
    assert abs(a - b_) < 1e-5, (a, b_)
    times = {n: [] for n in steps}
    for r in range(rounds):  # which goes first alternates: the second of a pair ran ~1% slower
      for name in (('other', 'this') if r % 2 == 0 else ('this', 'other')):
        start = time.perf_counter()
        jax.block_until_ready(steps[name](params))
        times[name].append(time.perf_counter() - start)
  med = {n: statistics.median(t) for n, t in times.items()}
  cpu = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo')
              if line.startswith('model name')), 'unknown CPU')
  print(f'{cpu}; float32 matmul peak {flops.measured_matmul_peak("float32") / 1e9:.0f} GFLOP/s')
  print(f"other {med['other'] * 1e3:.1f} ms, this {med['this'] * 1e3:.1f} ms, "
        f"this/other time {med['this'] / med['other']:.3f} (median of {rounds} rounds)")


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 10)
