"""Online KD against KD from teacher-logits caches, side by side on one machine: the
regime study's setup (experiments/study_regime.py: corpus, vocabulary, teacher and student
shapes) shortened to fit one session, with the baseline, kd and guide_kd arms online and
the kd and guide_kd arms from caches (k = 64, one cache per data seed, built by the study
runner before the runs), 3 seeds.

  python -m guide_jax.study --config=experiments/study_cached.py --sweep=main \
      --study_dir=workdirs/cached_study --parallel=2      # rerun to resume
  python -m guide_jax.report --study_dir=workdirs/cached_study --out_dir=results/cached_study

Shorter than the regime study: the teacher trains TEACHER_STEPS x 8,192 tokens (not
9,000 steps) and every student STUDENT_STEPS x 2,048 tokens (not 2,400 steps), so the
numbers compare online with cached KD; they are not the regime study's gap closures. Run
the regime study's own `cached` sweep beside its `main` one for those.
"""

import importlib.util
import os

import ml_collections

_spec = importlib.util.spec_from_file_location(
    'study_regime', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'study_regime.py'))
regime = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regime)

TEACHER_STEPS = 1000
STUDENT_STEPS = 600
SEEDS = regime.SEEDS
ARMS = {arm: regime.ARMS[arm] for arm in ('baseline', 'kd', 'guide_kd')}
ARMS.update(regime.CACHED_ARMS)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = regime.get_config(arg)
  teacher = c if arg == 'teacher' else c.teacher.pretrain
  teacher.train.steps = TEACHER_STEPS
  teacher.train.eval_every = 250
  if arg == 'teacher':
    return c
  c.train.steps = STUDENT_STEPS
  c.train.eval_every = 100
  c.train.checkpoint_every = 200
  return c


def get_sweep(name: str = 'main') -> list[dict]:
  if name != 'main':
    raise ValueError(f'unknown sweep {name!r}; choose main')
  return regime.seeded(ARMS)
