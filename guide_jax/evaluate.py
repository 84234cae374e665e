"""python -m guide_jax.evaluate --workdir=RUN [--tasks=TASK[,TASK...]]

  [--include_path=DIR]   a folder of your own lm-eval task YAMLs (as lm-eval's own CLI)
  [--limit=N]            at most N documents per task (a fraction if < 1)
  [--teacher=DIR]        the teacher that grades the student's samples (default: the run's)
  [--batch_size=8] [--dtype=float32] [--output=FILE]

Runs lm-evaluation-harness tasks on the run's latest checkpoint (or a Hugging Face
directory) through guide_jax.evals.harness, and writes the harness's results JSON to
WORKDIR/lm_eval_results.json (or --output), then prints one JSON line per (task, metric).
For a run on the embedded or files backend it also scores the run's own eval batches:
eval/loss (nats per token) and eval/bits_per_byte, and, for a run that set
loss.on_policy.new_tokens and has a teacher, eval/on_policy_kl and eval/sample_teacher_nll
(the student samples from the trainer's held-out prompts, the teacher grades them), under
"guide_jax" in the JSON and as a last printed line. Without --tasks only these are
computed (written to --output when given) and lm-eval is not needed; with tasks it is (the
`eval` extra).
"""

from __future__ import annotations

import json

from absl import app, flags

from guide_jax import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'A training run or a Hugging Face directory.')
_TASKS = flags.DEFINE_list('tasks', [], 'lm-eval task or group names.')
_INCLUDE = flags.DEFINE_string('include_path', '', 'A folder of extra task YAMLs.')
_LIMIT = flags.DEFINE_float('limit', None, 'Documents per task (a fraction if < 1).')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Rows per scoring batch.')
_DTYPE = flags.DEFINE_string('dtype', 'float32', "'float32' or 'bfloat16'.")
_OUTPUT = flags.DEFINE_string('output', '', 'Results JSON (default WORKDIR/lm_eval_results.json).')
_TEACHER = flags.DEFINE_string('teacher', '', 'A run or HF directory that grades the '
                               "student's samples (default: the run's teacher).")
flags.mark_flags_as_required(['workdir'])


def body() -> None:
  from guide_jax import config as config_lib
  if not _TASKS.value:
    own_data_only()
    return
  try:
    from guide_jax.evals import harness
  except ImportError as e:
    raise config_lib.ConfigError(f'lm-eval is not installed ({e}); pip install -e '
                                 f"'.[eval]'") from None
  limit = _LIMIT.value
  if limit is not None and limit >= 1:
    limit = int(limit)
  results = harness.run(_WORKDIR.value, _TASKS.value, _INCLUDE.value, limit, _BATCH.value,
                        _DTYPE.value, _OUTPUT.value, _TEACHER.value)
  from guide_jax import report
  for row in report.harness_rows(results):
    print(json.dumps(row))
  if results.get('guide_jax'):
    print(json.dumps(results['guide_jax']))


def own_data_only() -> None:
  """No lm-eval task: the run's own evaluation, printed (and written to --output)."""
  from etils import epath
  from guide_jax import config as config_lib
  from guide_jax import paths
  from guide_jax.evals import own_data
  from guide_jax.infer import sampler as sampler_lib
  loaded = sampler_lib.load(_WORKDIR.value, _DTYPE.value)
  scores = own_data.evaluate_run(paths.workdir_path(_WORKDIR.value), loaded, _TEACHER.value)
  if not scores:
    raise config_lib.ConfigError(f'--tasks is empty and --workdir={_WORKDIR.value} is not a '
                                 f'run on embedded or files data, so there is nothing to '
                                 f'evaluate; name lm-eval tasks (e.g. --tasks=lambada_openai)')
  if _OUTPUT.value:
    epath.Path(_OUTPUT.value).write_text(json.dumps({'guide_jax': scores}, indent=1))
  print(json.dumps(scores))


def main(argv):
  del argv
  cli.run(body)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
