"""GUIDE+KD from a Llama-3.1-70B-shaped teacher into a Llama-3.1-8B-shaped student at 8k.

  python -m guide_jax.main --config=experiments/guide_70b_8b.py \
      --config.teacher.checkpoint=gs://BUCKET/Llama-3.1-70B \
      --config.data.train_files='gs://BUCKET/corpus/*.jsonl.zst' --workdir=gs://BUCKET/70b_8b
  python -m guide_jax.aot --config=experiments/guide_70b_8b.py --num_slices=2 \
      --config.data.train_files=gs://b/x.jsonl        # the fit check (libtpu); data unread

The teacher is a Hugging Face Llama 3.1 directory (config.json, safetensors, tokenizer.json:
the student reads its tokenizer), frozen in bfloat16. The student has Llama-3.1-8B's shape
(d 4,096, 32 blocks, 32 query and 8 kv heads of 128, SwiGLU 14,336, the same 128,256-token
vocabulary, RoPE base 500,000 with llama3 scaling), initialised by GUIDE from the teacher.
Rows of 8,192 tokens, 256 rows a step (2.1M tokens), the fused output layer (the
[rows, 8192, 128256] logits of either model are never whole), splash attention, the MLP
recomputed in the backward (`save_dot_except_mlp`).

Compiled (python -m guide_jax.aot, libtpu 0.0.42.1, benchmarks/aot_70b_8b.log) for 2
slices of v5p:4x4x4 (128 chips): FSDP over the 64 chips of a slice, data parallel across
the two slices over DCN (mesh.dcn_data=-1 fills 2): 30.3 of 95 GiB a chip, compiled in
253 s, roofline >= 7.8 s a step (458 PFLOP of model FLOPs, the teacher's forward 3/4 of it).

`:cached` trains the same student from an offline teacher-logits cache instead
(teacher.logits_dir; build it with python -m guide_jax.teacher_logits on the 2 slices): the
70B teacher is loaded once for GUIDE's projection and freed, and the step holds no teacher.
On one slice (v5p:4x4x4, 64 chips; python -m guide_jax.aot
--config=experiments/guide_70b_8b.py:cached --teacher_logits_top_k=64): 43.5 GiB a chip,
roofline >= 4.1 s a step (121 PFLOP), on half the chips.
"""

from guide_jax import config as config_lib
from guide_jax import losses

SEQ_LEN = 8192
VOCAB = 128_256


def _llama31(c, d, n, heads, mlp):
  c.model.update(dict(
      family='llama', vocab_size=VOCAB, d_model=d, n_layers=n, n_heads=heads, n_kv_heads=8,
      head_dim=128, mlp_dim=mlp, max_len=SEQ_LEN, position='rope', rope_base=500_000.0,
      rope_scaling='llama3', rope_scaling_factor=8.0, rope_low_freq_factor=1.0,
      rope_high_freq_factor=4.0, rope_original_max_len=8192, norm='rmsnorm', norm_eps=1e-5,
      mlp='swiglu', tie_embeddings=False, dtype='bfloat16', param_dtype='float32',
      scan_layers=True, remat='save_dot_except_mlp'))
  c.data.update(dict(backend='files', seq_len=SEQ_LEN, global_batch_size=256,
                     eval_batches=4, tokenizer=''))
  c.mesh.update(dict(data=1, fsdp=-1, tensor=1, dcn_data=-1, dcn_fsdp=1))
  c.train.update(dict(steps=10_000, warmup_steps=500, learning_rate=1e-4, log_every=10,
                      eval_every=500, checkpoint_every=250))
  return c


def teacher_config():
  """Llama-3.1-70B's shape: d 8,192, 80 blocks, 64 query / 8 kv heads, SwiGLU 28,672."""
  return _llama31(config_lib.base_config(), 8192, 80, 64, 28_672)


def get_config(arg: str = ''):
  if arg not in ('', 'cached'):
    raise config_lib.ConfigError(f"experiments/guide_70b_8b.py:{arg}: the only variant is "
                                 f"'cached'")
  c = _llama31(config_lib.base_config(), 4096, 32, 32, 14_336)
  c.teacher.checkpoint = ''            # the HF teacher directory, on the command line
  c.teacher.dtype = 'bfloat16'
  c.guide = config_lib.guide_config()
  c.guide.blocks = 'all'
  c.guide.unembed = True               # untied student: W_U from the teacher's output layer
  c.loss.kd = losses.weight_config(1.0)
  c.topology = 'v5p:4x4x4'             # one slice; the run above uses two (--num_slices=2)
  if arg == 'cached':                  # one slice: the step holds no teacher
    c.teacher.logits_dir = ''          # the cache's directory, on the command line
    c.mesh.dcn_data = 1
  return c
