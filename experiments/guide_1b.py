"""GUIDE+KD at the paper's largest student size: a ~1.0B student from a ~3.4B teacher.

  python -m guide_jax.main --config=experiments/guide_1b.py --workdir=gs://BUCKET/guide_1b \
      --config.teacher.checkpoint=gs://BUCKET/teacher_3b

For a TPU pod slice (FSDP over all chips, bfloat16 compute, float32 params, the teacher
stored in bfloat16); not runnable on a laptop. ~20B tokens: 19,000 steps of 512 x 2048.
The tests validate it and build teacher, student and the GUIDE projection abstractly.

  python -m guide_jax.main --config=experiments/guide_1b.py:runlocal --workdir=/tmp/guide_1b_local

`runlocal` (big_vision's convention) is the same experiment at tiny sizes for a CPU smoke
test: every architecture choice (learned positions, RMSNorm, SwiGLU, tied embeddings, the
GQA ratio, head width relative to the model, the teacher/student ratios of width, heads,
MLP and depth), the GUIDE and loss settings, bfloat16 compute, remat and the FSDP mesh
are kept; widths are divided by 32, heads by 4, depth by 8 (rounded up). The teacher is
pretrained into WORKDIR/teacher first (30 steps), then the student trains 30 steps, on
the embedded corpus (the stdlib's `email` package, a 512-piece SentencePiece model).
About a minute on 2 CPU cores.
"""

import copy
import math

from guide_jax import config as config_lib
from guide_jax import losses

T5_VOCAB = 'gs://t5-data/vocabs/cc_all.32000/sentencepiece.model'  # 32,000 pieces


def _family(c, d, n, heads, mlp):
  c.model.update(dict(vocab_size=32000, d_model=d, n_layers=n, n_heads=heads,
                      n_kv_heads=heads, head_dim=128, mlp_dim=mlp, max_len=2048,
                      position='learned', norm='rmsnorm', mlp='swiglu', tie_embeddings=True,
                      dtype='bfloat16', param_dtype='float32', scan_layers=True,
                      remat='dots'))
  c.data.update(dict(backend='seqio', seqio_task='c4_en', tokenizer=T5_VOCAB, seq_len=2048,
                     global_batch_size=512, eval_batches=20))
  c.mesh.update(dict(data=1, fsdp=-1, tensor=1))   # ZeRO-3 over the slice
  c.train.update(dict(steps=19_000, warmup_steps=1_000, learning_rate=3e-4,
                      log_every=50, eval_every=1_000, checkpoint_every=1_000))
  return c


def teacher_config():
  """~3.4B teacher: d 2560, 32 blocks, 20 heads of 128, SwiGLU 10240."""
  return _family(config_lib.base_config(), 2560, 32, 20, 10240)


def runlocal(c, teacher):
  """`c` (a student config of this family) and its `teacher` config shrunk for a CPU: the
  student trains from a teacher pretrained into WORKDIR/teacher (see the docstring)."""
  lm_tiny = config_lib.load_experiment_module('lm_tiny').get_config()
  for cfg in (c, teacher):
    m = cfg.model
    group = m.n_heads // m.n_kv_heads
    n_kv = max(1, m.n_kv_heads // 4)
    m.update(dict(vocab_size=lm_tiny.model.vocab_size, d_model=m.d_model // 32,
                  n_layers=math.ceil(m.n_layers / 8), n_kv_heads=n_kv, n_heads=n_kv * group,
                  head_dim=m.head_dim // 8, mlp_dim=m.mlp_dim // 32, max_len=64))
    cfg.data = copy.deepcopy(lm_tiny.data)  # embedded corpus (email package), seq 64, batch 8
    cfg.data.tokenizer = ''           # a SentencePiece model trained on it, cached
    cfg.train.update(dict(steps=30, warmup_steps=5, log_every=10, eval_every=30,
                          checkpoint_every=30))
    cfg.topology = ''
  c.teacher.checkpoint = ''
  c.teacher.pretrain = teacher
  return c


def get_config(arg: str = ''):
  if arg not in ('', 'runlocal'):
    raise config_lib.ConfigError(f"experiments/guide_1b.py:{arg}: the only variant is "
                                 f"'runlocal'")
  c = _family(config_lib.base_config(), 2048, 14, 16, 8192)  # ~1.0B student
  c.teacher.checkpoint = ''            # set to the teacher's workdir on the command line
  # 32 v5p chips: 32.4 of 95 GiB per chip with splash attention (auto on TPU) and remat
  # 'dots' (44.8 GiB with xla attention; python -m guide_jax.aot --config=experiments/
  # guide_1b.py). It also fits 16 chips (v5p:2x2x4) with splash, at 63.1 GiB per chip.
  c.topology = 'v5p:4x4x2'
  c.teacher.dtype = 'bfloat16'         # frozen teacher: half the memory, bf16 forward
  c.guide = config_lib.guide_config()  # embeddings + guided blocks
  # guide.blocks='all' (uniform selection of teacher blocks over depth), not the paper's
  # first block only: in the CPU ablation (results/cpu_study/ablation/report.md) it was
  # the one option that clearly helped (validation loss 2.843 vs 2.888 at 100 steps; the
  # others moved it by < 0.006). Untested at this scale: rerun the ablation sweep here.
  c.guide.blocks = 'all'
  c.loss.kd = losses.weight_config(1.0)
  c.loss.temperature = 1.0
  return runlocal(c, teacher_config()) if arg == 'runlocal' else c
