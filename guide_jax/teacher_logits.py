"""python -m guide_jax.teacher_logits --config=CFG --out=DIR [--top_k=64] [--steps=N]

Runs the config's teacher (teacher.checkpoint) once over exactly the batches its student
will see, steps 0..N-1 of its data order (N defaults to train.steps), and writes the
teacher's top-k logits, their ids, its log-sum-exp over the whole vocabulary and over the
rest, and the target's logit for every position into DIR (guide_jax/train/teacher_cache.py
has the layout). Then train the student from it:

  python -m guide_jax.main --config=CFG --config.teacher.logits_dir=DIR --workdir=RUN

Sharded like training (every process writes its own rows; the bytes do not depend on the
process count); rerunning the same command after a kill resumes at the first unfinished
block, and a larger --steps extends a cache. Prints one JSON line: the manifest's sizes
and the build's tokens/s.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from guide_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The student run\'s config.')
_OUT = flags.DEFINE_string('out', None, 'The cache directory (local or gs://).')
_TOP_K = flags.DEFINE_integer('top_k', 64, 'Logits kept per position (k = vocabulary size '
                              'is exact KD).')
_STEPS = flags.DEFINE_integer('steps', 0, 'Steps cached, from step 0; 0 = train.steps.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                           'Storage of the top-k logits (the rest is always float32).')
flags.mark_flags_as_required(['config', 'out'])


def main(argv):
  del argv

  def body():
    import jax
    from guide_jax.train import teacher_cache
    cfg = cli.config_value(_CONFIG)
    result = teacher_cache.build(cfg, _OUT.value, _TOP_K.value, _STEPS.value, _DTYPE.value,
                                 progress=cfg.train.progress_bar)
    m = result.manifest
    if jax.process_index() == 0:
      print(json.dumps({
          'out': str(result.directory), 'steps': m['steps'], 'top_k': m['top_k'],
          'dtype': m['dtype'], 'bytes_per_token': m['bytes_per_token'],
          'steps_built': result.steps_built, 'seconds': round(result.seconds, 2),
          'tokens_per_s': result.tokens_per_s,
          'teacher_eval_loss': m.get('teacher_eval', {}).get('eval_loss')}), flush=True)

  cli.run(body)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
