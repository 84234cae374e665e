"""GUIDE in the paper's regime, sized for a 2-core CPU: a converged teacher, students
trained to their plateau, gap closure against tokens with 95% confidence intervals.

  python -m guide_jax.study --config=experiments/study_regime.py --sweep=main \
      --study_dir=workdirs/regime_study --parallel=2
  python -m guide_jax.report --study_dir=workdirs/regime_study --out_dir=results/regime_study

Corpus: the Python sources of four installed packages (torch, sympy, pandas, scipy: ~118
MB, ~1.6k-file packages each, far less copy-pasted code than transformers), read by the
files backend in place. A SentencePiece model of VOCAB pieces is trained on it once. 2% of
the files are held out for validation and 2% for the test split the study reports on.

Sizes (the second design; the first, a 554k teacher at 44 tokens a parameter, was still
improving 3.6% over its last quarter): the teacher (d 64, 3 blocks, 4 heads of 16, SwiGLU
256; 271k parameters) has 3.1x the student's (d 32, 2 heads of 16, SwiGLU 128; 86k), the
paper's ratio. Time on this CPU goes with parameters x tokens, so both shrank by ~2x to
buy the teacher ~6x more tokens a parameter: TEACHER_STEPS x 8,192 = 74M tokens, 272 a
parameter, 1.45 passes over the corpus (each token seen at most about twice, so it cannot
memorise). Every student trains for STUDENT_STEPS x 2,048 = 4.9M tokens, 57 a parameter
(the first design's baseline, at 25, was still improving 2.9% over its last quarter), with
a cosine schedule to 10% of the peak, and evaluates at step 0 so the curves show the head
start.

Results (all 15 runs, 2026-11-28): results/regime_study/README.md.

The sweep is plain data (`get_sweep`), as in study_cpu.py; a seed changes the student's
init and its data order, the teacher is shared. The runner skips finished runs and resumes
an interrupted one from its checkpoint, so the study continues across sessions.
"""

import importlib.util
import os

import ml_collections

from guide_jax import config as config_lib
from guide_jax import losses

VOCAB = 1024
SEQ_LEN = 128
TEACHER_BATCH = 64              # 8,192 tokens a step
TEACHER_STEPS = 9000            # 73.7M tokens: 272 per teacher parameter, 1.45 epochs;
                                # ~2.5 h at the 0.97 s a step measured here
STUDENT_BATCH = 16              # 2,048 tokens a step
STUDENT_STEPS = 2400            # 4.9M tokens: 57 per student parameter
SEEDS = (0, 1, 2)
PACKAGES = ('torch', 'sympy', 'pandas', 'scipy')


def package_dir(name: str) -> str:
  """Where an installed package's sources are, found without importing it."""
  spec = importlib.util.find_spec(name)
  if spec is None or not spec.submodule_search_locations:
    raise ValueError(f'study_regime reads the sources of {name}; install it '
                     f'(make install puts it in .venv)')
  return list(spec.submodule_search_locations)[0]


def corpus_globs() -> str:
  return ','.join(os.path.join(package_dir(p), '**', '*.py') for p in PACKAGES)


def _common(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c.model.vocab_size = VOCAB
  c.model.n_layers = 3
  c.model.head_dim = 16
  c.model.max_len = SEQ_LEN
  c.model.dtype = 'float32'          # at these widths f32 beats bf16 on this CPU
  c.model.scan_layers = False        # and unrolled beats scanned
  c.data.backend = 'files'
  c.data.train_files = corpus_globs()
  c.data.seq_len = SEQ_LEN
  c.data.test_percent = 2            # held out: the study reports on it
  c.data.eval_split = 'test'
  c.data.eval_batches = 16           # 65k held-out tokens an evaluation
  c.train.learning_rate = 3e-3
  c.train.log_every = 100
  c.train.checkpoint_every = 500
  c.train.keep_checkpoints = 1
  c.train.progress_bar = False
  return c


def teacher_config() -> ml_collections.ConfigDict:
  c = _common(config_lib.base_config())
  c.model.d_model = 64
  c.model.n_heads = 4
  c.model.n_kv_heads = 4
  c.model.mlp_dim = 256
  c.data.global_batch_size = TEACHER_BATCH
  c.train.steps = TEACHER_STEPS
  c.train.warmup_steps = 300
  c.train.eval_every = 450           # 20 points: enough to see the last quarter flatten
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The student run every sweep entry starts from (the `guide_kd` arm as is);
  `--config=experiments/study_regime.py:teacher` gives the teacher's pretraining config."""
  if arg == 'teacher':
    return teacher_config()
  c = _common(config_lib.base_config())
  c.teacher.pretrain = teacher_config()
  c.model.d_model = 32
  c.model.n_heads = 2
  c.model.n_kv_heads = 2
  c.model.mlp_dim = 128
  c.data.global_batch_size = STUDENT_BATCH
  c.train.steps = STUDENT_STEPS
  c.train.warmup_steps = 100
  c.train.eval_every = 120           # 20 points on the curve, plus step 0
  c.train.eval_at_start = True
  c.guide = config_lib.guide_config()
  c.guide.blocks = 'all'             # the CPU ablation's winner (study_cpu.py)
  c.loss.kd = losses.weight_config(1.0)
  return c


MATCH_DECAY = {'loss.match.kind': 'linear', 'loss.match.value': 1.0,
               'loss.match.end_value': 0.0}
ARMS = {
    'baseline': {'guide.init': 'none', 'loss.kd.value': 0.0},
    'kd': {'guide.init': 'none'},
    'guide': {'loss.kd.value': 0.0},
    'guide_kd': {},
    'guide_match_kd': MATCH_DECAY,
}


# The KD arms again, each reading the teacher-logits cache of its data seed (k = 64) instead
# of running the teacher: guide_jax.study builds one cache per seed, shared by both arms.
CACHED_ARMS = {f'{arm}_cached': {**ARMS[arm], 'teacher.cache_top_k': 64}
               for arm in ('kd', 'guide_kd')}
SWEEPS = {'main': ARMS, 'cached': CACHED_ARMS}


def get_sweep(name: str = 'main') -> list[dict]:
  """The runs of sweep `name`: each a dict of dotted config overrides plus its 'name'.
  Seeds run innermost-last so that a partial study has every arm at seed 0 first.
  `cached` (the kd and guide_kd arms from teacher-logits caches) goes in the same
  --study_dir as `main`, so that the report pairs them with main's baseline and KD arms."""
  if name not in SWEEPS:
    raise ValueError(f'unknown sweep {name!r}; choose one of {sorted(SWEEPS)}')
  return seeded(SWEEPS[name])


def seeded(arms: dict) -> list[dict]:
  """Every arm at every seed, each run named ARM/seedK (what the report groups by)."""
  return [{'name': f'{arm}/seed{s}', 'train.seed': 100 + s, 'data.seed': s, **overrides}
          for s in SEEDS for arm, overrides in arms.items()]
