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
import jax
import ml_collections

from guide_jax import cli
from guide_jax import config as config_lib
from guide_jax import paths, sharding
from guide_jax.data import pipeline
from guide_jax.train import teacher as teacher_lib
from guide_jax.train import teacher_cache


def build(config: ml_collections.ConfigDict, out: str, top_k: int = 64, steps: int = 0,
          dtype: str = 'float32', progress: bool = False, log=print,
          stop_after_blocks: int | None = None) -> teacher_cache.BuildResult:
  """The whole build behind `python -m guide_jax.teacher_logits`: validate the run's config,
  load its teacher and data on the mesh, write (or resume) the cache for steps
  0..steps-1 (default train.steps), and record the teacher's eval loss on the run's eval
  batches in the manifest (the student's run logs it without running the teacher)."""
  cfg = ml_collections.ConfigDict(config.to_dict())
  steps = steps or cfg.train.steps
  if steps < 1:
    raise teacher_cache.CacheError(f'--steps={steps} must be positive')
  sharding.maybe_initialize_distributed(cfg.distributed)
  config_lib.validate(cfg, jax.device_count(), jax.process_count(), jax.default_backend(),
                      sharding.num_slices(jax.devices()))
  if not (cfg.teacher.checkpoint or cfg.teacher.pretrain):
    raise teacher_cache.CacheError('the config names no teacher (teacher.checkpoint); the cache holds a '
                     'teacher\'s logits')
  if not cfg.teacher.checkpoint:
    raise teacher_cache.CacheError('teacher.checkpoint is empty: the cache needs a trained teacher; train '
                     'it first (the student\'s run trains WORKDIR/teacher) and pass '
                     '--config.teacher.checkpoint=WORKDIR/teacher')
  if cfg.data.backend == 'seqio':
    raise teacher_cache.CacheError("data.backend='seqio' has no random access to a step's rows; the "
                     "teacher-logits cache needs the grain pipeline (embedded, files, "
                     "synthetic)")
  out_dir = paths.workdir_path(out)
  mesh, rules = sharding.make_mesh(cfg.mesh), tuple(cfg.logical_rules)
  with jax.set_mesh(mesh), sharding.use_rules(rules):
    teacher_lib.running_model(
        cfg, teacher_lib.model_config(cfg), jax.default_backend())  # kernel check
    teacher = teacher_lib.load(paths.workdir_path(cfg.teacher.checkpoint), mesh, rules,
                               cfg.teacher.dtype, cfg.teacher.attention_kernel)
    teacher_lib.check_vocabulary(cfg, teacher)
    teacher_lib.check_sequence(cfg, teacher)
    try:
      data = pipeline.build(cfg, progress=progress and jax.process_index() == 0)
    except (ValueError, FileNotFoundError) as e:
      raise config_lib.ConfigError(str(e)) from None
    result = teacher_cache.write(cfg, out_dir, teacher, data, mesh, rules, top_k, steps, dtype,
                   progress and jax.process_index() == 0, log, stop_after_blocks)
    if result.interrupted or 'teacher_eval' in result.manifest:
      return result
    eval_loss = teacher_cache.write_eval(cfg, out_dir, teacher, data, mesh, rules,
                           result.manifest['top_k'])
    result.manifest['teacher_eval'] = {'eval_split': cfg.data.eval_split,
                                       'eval_batches': cfg.data.eval_batches,
                                       'eval_rows': pipeline.EVAL_ROWS,
                                       'batches_cached': len(data.eval_batches),
                                       'eval_loss': eval_loss}
    if jax.process_index() == 0:
      teacher_cache.write_atomic(out_dir / teacher_cache.MANIFEST, json.dumps(result.manifest, indent=2).encode())
  return result


def define_flags() -> None:
  """Command-line flags (defined only when run as a program, so importing is free)."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'The student run\'s config.')
  flags.DEFINE_string('out', None, 'The cache directory (local or gs://).')
  flags.DEFINE_integer('top_k', 64, 'Logits kept per position (k = vocabulary size is exact '
                       'KD).')
  flags.DEFINE_integer('steps', 0, 'Steps cached, from step 0; 0 = train.steps.')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'],
                    'Storage of the top-k logits (the rest is always float32).')
  flags.mark_flags_as_required(['config', 'out'])


def main(argv):
  del argv
  f = flags.FLAGS

  def body():
    cfg = cli.config_value(f['config'])
    result = build(cfg, f.out, f.top_k, f.steps, f.dtype, progress=cfg.train.progress_bar)
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
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
