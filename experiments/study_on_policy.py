"""On-policy distillation against KD on data, with and without GUIDE's head start: the
regime study's setup (experiments/study_regime.py: corpus, vocabulary, teacher and student
shapes, recipe) at the cached study's length (experiments/study_cached.py), 3 seeds.

  python -m guide_jax.study --config=experiments/study_on_policy.py --sweep=main \
      --study_dir=workdirs/on_policy_study --parallel=2      # rerun to resume
  python -m guide_jax.report --study_dir=workdirs/on_policy_study \
      --out_dir=results/on_policy_study

The teacher is study_cached.py's (TEACHER_STEPS x 8,192 tokens): the runner trains it into
STUDY_DIR/teacher unless it is there (pass --teacher_dir=workdirs/cached_study/teacher to
reuse that study's). Arms, every one STUDENT_STEPS x 16 rows x 128 student tokens:
  baseline          CE on data (the closure's reference)
  kd                CE + KD on data
  on_policy         every row the student's: a 64-token prompt (a data row's first
                    document piece) + 64 sampled tokens, per-token reverse KL to the teacher
  mixed             half the rows on-policy, half CE + KD on data
  guide_kd          GUIDE's initialisation + CE + KD
  guide_on_policy   GUIDE's initialisation + on-policy rows only
  kd_then_on_policy, guide_kd_then_on_policy
                    kd and guide_kd for the first half of training, then every row on-policy
                    (loss.on_policy.start_step), the recipe of on-policy after a warm start
A row on-policy holds prompt + sample = 128 tokens, a data row 128: equal student tokens.
Every arm (baseline included) evaluates eval/on_policy_kl and eval/sample_teacher_nll: the
student samples 64 tokens after each of 64 fixed held-out prompts (temperature 1) and the
teacher grades them. The report gives the CE gap closure, the same closure of
eval/on_policy_kl (the teacher's own is 0), and each arm's step time over the kd arm's.
"""

import importlib.util
import os

import ml_collections

_spec = importlib.util.spec_from_file_location(
    'study_cached', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'study_cached.py'))
cached = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cached)
regime = cached.regime

PROMPT_LEN = 64
NEW_TOKENS = regime.SEQ_LEN - PROMPT_LEN   # prompt + sample fill a row: equal tokens

ON_POLICY = {'loss.on_policy.fraction': 1.0}
HALFWAY = {'loss.on_policy.start_step': cached.STUDENT_STEPS // 2}
ARMS = {
    'baseline': regime.ARMS['baseline'],
    'kd': regime.ARMS['kd'],
    'on_policy': {'guide.init': 'none', **ON_POLICY},
    'mixed': {'guide.init': 'none', 'loss.on_policy.fraction': 0.5},
    'guide_kd': regime.ARMS['guide_kd'],
    'guide_on_policy': ON_POLICY,
    # KD on data for the first half, then every row on-policy
    'kd_then_on_policy': {'guide.init': 'none', **ON_POLICY, **HALFWAY},
    'guide_kd_then_on_policy': {**ON_POLICY, **HALFWAY},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = cached.get_config(arg)
  if arg == 'teacher':
    return c
  op = c.loss.on_policy
  op.prompt_len = PROMPT_LEN
  op.new_tokens = NEW_TOKENS
  op.temperature = 1.0
  op.kind = 'reverse_kl'
  op.eval_batches = 4             # 64 held-out prompts, 4,096 sampled tokens an evaluation
  return c


def get_sweep(name: str = 'main') -> list[dict]:
  if name != 'main':
    raise ValueError(f'unknown sweep {name!r}; choose main')
  return regime.seeded(ARMS)
