"""KV-cache decoding speed of the demo's student: tokens/s, and how flat time per token stays.

  python benchmarks/decode.py [--new_tokens=512] [--out=benchmarks/decode.json]

The model is experiments/demo.py's GUIDE+KD student (d_model 96, 4 layers, vocab 4096,
learned positions) with random weights (decoding time does not depend on their values),
its position table widened to 1024 so that a 512-token generation fits (the demo trains
at 128). For batch 1 and 16, a 16-token prompt, greedy, no EOS: the first call compiles,
the second is timed. Reported per batch: decode tokens/s (new tokens of all rows over the
wall time of the loop, prefill included) and the median time of new tokens 2-33 against
that of the last 32: a cache keeps the ratio near 1 where recomputing the prefix would
grow it with the length. The last line is one JSON object.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import time

from absl import app, flags

_NEW = flags.DEFINE_integer('new_tokens', 512, 'Tokens generated per row.')
_OUT = flags.DEFINE_string('out', '', 'Also write the JSON here.')


def main(argv):
  del argv
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax
  from guide_jax import config as config_lib
  from guide_jax import sharding
  from guide_jax.infer import sampler as sampler_lib
  from guide_jax.models import transformer

  cfg = config_lib.load_experiment_module('demo').get_config().model
  cfg.max_len = 1024
  mesh = sharding.make_mesh(config_lib.base_config().mesh)
  _, shardings = transformer.abstract_params_and_shardings(cfg, mesh, sharding.DEFAULT_RULES)
  params = jax.jit(lambda k: transformer.init_params(cfg, k), out_shardings=shardings)(
      jax.random.key(0))
  sampler = sampler_lib.Sampler(cfg, params, eos_id=-1, mesh=mesh)
  sampling = sampler_lib.Sampling(max_new_tokens=_NEW.value)
  out = {'device': jax.devices()[0].device_kind, 'devices': jax.device_count(),
         'model': 'demo student (d96, 4 layers, vocab 4096)', 'new_tokens': _NEW.value}
  for batch in (1, 16):
    prompts = [[(7 * b + i) % 4000 + 3 for i in range(16)] for b in range(batch)]
    sampler.generate(prompts, sampling)  # compile
    stamps = []
    start = time.perf_counter()
    sampler.generate(prompts, sampling, on_step=lambda *_: stamps.append(time.perf_counter()))
    total = time.perf_counter() - start
    per_token = [b - a for a, b in zip(stamps, stamps[1:])]
    first, last = statistics.median(per_token[:32]), statistics.median(per_token[-32:])
    out[f'batch_{batch}'] = {
        'tokens_per_s': round(batch * _NEW.value / total, 1),
        'ms_per_step_first_32': round(first * 1e3, 3), 'ms_per_step_last_32': round(last * 1e3, 3),
        'last_over_first': round(last / first, 3)}
    print(json.dumps({f'batch_{batch}': out[f'batch_{batch}']}), flush=True)
  print(json.dumps(out))
  if _OUT.value:
    pathlib.Path(_OUT.value).write_text(json.dumps(out, indent=1) + '\n')


if __name__ == '__main__':
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
  app.run(main)
