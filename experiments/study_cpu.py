"""CPU-scale GUIDE study: does GUIDE close the teacher-student gap here, and beside KD?

  python -m guide_jax.study --config=experiments/study_cpu.py --sweep=main \
      --study_dir=workdirs/cpu_study
  python -m guide_jax.report --study_dir=workdirs/cpu_study

One teacher (~5.3M parameters: d 256, 4 blocks, 4 heads of 64, SwiGLU 1024, tied 4096
vocabulary) is pretrained once on the embedded stdlib corpus; then every run of the sweep
trains a ~1.6M-parameter student (d 128, 2 heads, SwiGLU 512: 3.3x smaller) for the same
tokens from it. Sequence 256, batch 16, bfloat16 matmuls (this CPU's bf16 matmul peak is
~3x its f32 one). Every run evaluates on the corpus's held-out *test* split (2% of files,
never used to choose anything); the ablation sweep tunes on the validation split.

Sweeps (plain data, `get_sweep(name)`, shared by the local runner and the launchers):
  main      6 arms x 3 seeds: baseline, kd, guide, guide_match, guide_kd, guide_match_kd
  ablation  GUIDE_METHOD.md's options on the `guide` arm (plus its baseline), 1 seed,
            100 steps, evaluated on validation
A seed changes the student's init and its data order; the teacher is the same for all.

Measured on the 2-core CPU machine (see results/cpu_study/): teacher 400 steps,
students 150 steps (614,400 tokens each).
"""

import ml_collections

from guide_jax import config as config_lib
from guide_jax import losses

TEACHER_STEPS = 400
STUDENT_STEPS = 150
SEEDS = (0, 1, 2)


def _common(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c.model.vocab_size = 4096
  c.model.n_layers = 4
  c.model.head_dim = 64
  c.model.max_len = 256
  c.model.dtype = 'bfloat16'         # f32 params and accumulation
  c.data.seq_len = 256
  c.data.global_batch_size = 16
  c.data.test_percent = 2            # held out: the main study reports on it
  c.data.eval_split = 'test'
  c.data.eval_batches = 8
  c.train.learning_rate = 3e-3
  c.train.log_every = 25
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 1
  c.train.progress_bar = False
  return c


def teacher_config() -> ml_collections.ConfigDict:
  c = _common(config_lib.base_config())
  c.model.d_model = 256
  c.model.n_heads = 4
  c.model.n_kv_heads = 4
  c.model.mlp_dim = 1024
  c.train.steps = TEACHER_STEPS
  c.train.warmup_steps = 40
  c.train.eval_every = 100
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The student run every sweep entry starts from (the `guide_kd` arm as is);
  `--config=experiments/study_cpu.py:teacher` gives the teacher's pretraining config."""
  if arg == 'teacher':
    return teacher_config()
  c = _common(config_lib.base_config())
  c.teacher.pretrain = teacher_config()
  c.model.d_model = 128
  c.model.n_heads = 2
  c.model.n_kv_heads = 2
  c.model.mlp_dim = 512
  c.train.steps = STUDENT_STEPS
  c.train.warmup_steps = 20
  c.train.eval_every = 25           # curves: eval loss against tokens
  c.guide = config_lib.guide_config()
  # The ablation (results/cpu_study/ablation) found guiding every block (uniform selection
  # over depth) clearly better than the paper's first block only: validation loss 2.843 vs
  # 2.888 after 100 steps, where the other options moved it by <0.006.
  c.guide.blocks = 'all'
  c.loss.kd = losses.weight_config(1.0)
  return c


# What each arm changes in get_config(). MATCH decays linearly to 0 over training: a pull
# toward the projected teacher early, free to leave it later.
MATCH_DECAY = {'loss.match.kind': 'linear', 'loss.match.value': 1.0,
               'loss.match.end_value': 0.0}
ARMS = {
    'baseline': {'guide.init': 'none', 'loss.kd.value': 0.0},
    'kd': {'guide.init': 'none'},
    'guide': {'loss.kd.value': 0.0},
    'guide_match': {'loss.kd.value': 0.0, **MATCH_DECAY},
    'guide_kd': {},
    'guide_match_kd': MATCH_DECAY,
}

# One change each to the `guide` arm (with the paper's guide.blocks='first', as it ran),
# tuned on the validation split. attn_logit_rescale is
# left out: teacher and student share head_dim 64 here, so it multiplies W_Q by 1.
ABLATION_STEPS = 100   # 2/3 of the main study's tokens, one seed: 11 runs in ~20 minutes
ABLATION = {
    'baseline': ARMS['baseline'],
    'guide': ARMS['guide'],
    'center': {**ARMS['guide'], 'guide.center': True},
    'no_fold_norm': {**ARMS['guide'], 'guide.fold_norm': False},
    'rescale_outputs': {**ARMS['guide'], 'guide.rescale_outputs': True},
    'blocks_all': {**ARMS['guide'], 'guide.blocks': 'all'},
    'embeddings_only': {**ARMS['guide'], 'guide.init': 'embeddings'},
    'pca_embed_pos': {**ARMS['guide'], 'guide.pca_rows': 'embed+pos'},
    'untied_unembed': {**ARMS['guide'], 'model.tie_embeddings': False, 'guide.unembed': True},
    'match_linear': ARMS['guide_match'],
    'match_const_0.1': {**ARMS['guide'], 'loss.match.value': 0.1},
}


PAPER_GUIDE = {'guide.blocks': 'first'}


def get_sweep(name: str = 'main') -> list[dict]:
  """The runs of sweep `name`: each a dict of dotted config overrides plus its 'name'."""
  if name == 'main':
    return [{'name': f'{arm}/seed{s}', 'train.seed': 100 + s, 'data.seed': s, **overrides}
            for arm, overrides in ARMS.items() for s in SEEDS]
  if name == 'ablation':
    return [{'name': f'{arm}/seed{s}', 'train.seed': 100 + s, 'data.seed': s,
             'data.eval_split': 'validation', 'train.steps': ABLATION_STEPS, **PAPER_GUIDE,
             **overrides}
            for arm, overrides in ABLATION.items() for s in SEEDS[:1]]
  raise ValueError(f'unknown sweep {name!r}; choose main or ablation')
