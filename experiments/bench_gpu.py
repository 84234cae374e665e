"""Benchmark config for one GPU: a ~110M-parameter student and a ~390M teacher, bfloat16.

  python -m guide_jax.bench --config=experiments/bench_gpu.py --steps=10 \
      --arms=baseline,guide,kd,guide_match_kd

Student: d 768, 12 blocks, 12 heads of 64, SwiGLU 2048, vocab 32768 (~110M params);
teacher: d 1536, 12 blocks, 24 heads, SwiGLU 4096 (~390M, ~3.5x, the paper's ratio).
Batch 32 x 1024 tokens, bfloat16 matmuls with float32 parameters and accumulation, the
teacher stored in bfloat16. Synthetic tokens; only the student's train step is timed.
Results on an H100 in benchmarks/README.md (run there by benchmarks/gpu_run.sh).
"""

from guide_jax import config as config_lib


def _model(c, d, layers, heads, mlp):
  c.model.vocab_size = 32768
  c.model.d_model = d
  c.model.n_layers = layers
  c.model.n_heads = heads
  c.model.n_kv_heads = heads
  c.model.head_dim = 64
  c.model.mlp_dim = mlp
  c.model.max_len = 1024
  c.model.position = 'rope'
  c.model.tie_embeddings = False
  c.model.dtype = 'bfloat16'
  c.data.backend = 'synthetic'
  c.data.seq_len = 1024
  c.data.global_batch_size = 32
  return c


def get_config():
  c = _model(config_lib.base_config(), 768, 12, 12, 2048)
  c.teacher.pretrain = _model(config_lib.base_config(), 1536, 12, 24, 4096)
  c.teacher.dtype = 'bfloat16'
  c.guide = config_lib.guide_config()
  c.guide.blocks = 'all'
  c.guide.unembed = True
  return c
