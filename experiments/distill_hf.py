"""Distill a Hugging Face teacher into a GUIDE-initialised student of its own family.

  python -m guide_jax.main --config=experiments/distill_hf.py:/path/to/hf_model \
      --workdir=/tmp/distill_hf
  python -m guide_jax.export --workdir=/tmp/distill_hf --out=/tmp/distill_hf_student

TEACHER_DIR is a local (or gs://) directory with config.json, *.safetensors and
tokenizer.json (GPT-2, Llama 2/3, Mistral, Qwen2/2.5, Qwen3, Gemma, Gemma 2 or Gemma 3's
text model). The student keeps every architecture choice of the teacher (family,
positions, norms and sandwich norms, MLP, biases, q/k norms, RoPE and its scaling, GQA
ratio, head width, soft-caps, its sliding window and its pattern of local and global
layers: Gemma 2's alternation, Gemma 3's 5 local : 1 global) and takes a fraction of its size:
half the width, heads, kv heads, MLP and depth by default. It is initialised by GUIDE
(embeddings and every block from the teacher) and trained with CE + KD on the embedded
corpus, tokenized with the teacher's tokenizer. Every field can be overridden as usual
(--config.model.n_layers=4, --config.data.seq_len=512, ...). Runtime depends on the
teacher: a tiny test teacher takes under a minute on 2 CPU cores.
"""

from guide_jax import config as config_lib
from guide_jax import losses
from guide_jax.guide import projection
from guide_jax.hf import checkpoint as hf_checkpoint

WIDTH_FRACTION = 0.5   # student d_model, heads, kv heads and MLP width / the teacher's
DEPTH_FRACTION = 0.5   # student blocks / the teacher's


def _scaled(value: int, fraction: float, multiple: int = 1) -> int:
  return max(multiple, int(round(value * fraction / multiple)) * multiple)


def student_model(teacher):
  """The teacher's architecture at WIDTH_FRACTION / DEPTH_FRACTION of its size."""
  m = config_lib.model_config()
  m.update(teacher.to_dict())               # same family and features
  m.d_model = _scaled(teacher.d_model, WIDTH_FRACTION, 8)
  m.n_kv_heads = _scaled(teacher.n_kv_heads, WIDTH_FRACTION)
  group = teacher.n_heads // teacher.n_kv_heads  # keep the GQA ratio (GUIDE needs <=)
  m.n_heads = m.n_kv_heads * group
  if teacher.family == 'gpt2':              # GPT-2 has no head_dim of its own: h * l = d
    m.head_dim = m.d_model // m.n_heads
  m.mlp_dim = _scaled(teacher.mlp_dim, WIDTH_FRACTION, 8)
  m.n_layers = _scaled(teacher.n_layers, DEPTH_FRACTION)
  m.layer_types = student_layer_types(teacher.layer_types, m.n_layers)
  m.max_len = min(teacher.max_len, 2048)
  m.param_dtype = m.dtype = 'float32'
  return m


def student_layer_types(teacher_types: str, n_layers: int) -> str:
  """The teacher's pattern of local and global layers over the student's depth: a periodic
  pattern (Gemma 2: local, global; Gemma 3: 5 local, 1 global) repeated, else (Qwen2's
  first full layers) the kinds of the teacher layers GUIDE maps the student's from."""
  if not teacher_types:
    return ''
  kinds = teacher_types.split(',')
  period = next(p for p in range(1, len(kinds) + 1)
                if all(k == kinds[i % p] for i, k in enumerate(kinds)))
  if period < len(kinds):
    return ','.join(kinds[i % period] for i in range(n_layers))
  return ','.join(kinds[i] for i in projection.uniform_selection(len(kinds), n_layers))


def get_config(teacher_dir: str = ''):
  if not teacher_dir:
    raise config_lib.ConfigError('experiments/distill_hf.py needs the teacher directory: '
                                 '--config=experiments/distill_hf.py:TEACHER_DIR')
  teacher = hf_checkpoint.model_config(teacher_dir)
  c = config_lib.base_config()
  c.teacher.checkpoint = teacher_dir        # a Hugging Face directory
  c.teacher.dtype = 'float32'               # 'bfloat16' halves the teacher's memory
  c.model = student_model(teacher)
  c.data.tokenizer = ''                     # the teacher's tokenizer.json
  c.data.seq_len = min(256, teacher.max_len)
  c.guide.blocks = 'all'                    # every student block from a teacher block
  c.guide.unembed = not c.model.tie_embeddings
  c.loss.kd = losses.weight_config(1.0)     # CE + KD
  return c
