"""Benchmark config for this CPU: a d_model 512 student and a 2x-wide teacher.

  python -m guide_jax.bench --config=experiments/bench_cpu.py --steps=10 \
      --compile_depths=4,32

Student: d 512, 4 blocks, 8 heads of 64, SwiGLU 2048, vocab 4096 (~15M params); teacher:
d 1024, 16 heads, SwiGLU 4096 (~55M), so KD's theoretical cost ratio is ~2.3. Batch 16 x
256 tokens, float32 compute (bf16 has its own, much higher, AMX matmul peak on this CPU;
run --config.model.dtype=bfloat16 --config.teacher.pretrain.model.dtype=bfloat16 to see
it). Only the student's train step is timed; nothing is trained or written.
"""

from guide_jax import config as config_lib


def _model(c, d, heads, mlp):
  c.model.vocab_size = 4096
  c.model.d_model = d
  c.model.n_layers = 4
  c.model.n_heads = heads
  c.model.n_kv_heads = heads
  c.model.head_dim = 64
  c.model.mlp_dim = mlp
  c.model.max_len = 256
  c.data.backend = 'synthetic'
  c.data.seq_len = 256
  c.data.global_batch_size = 16
  c.mesh.data = 1
  return c


def get_config():
  c = _model(config_lib.base_config(), 512, 8, 2048)
  c.teacher.pretrain = _model(config_lib.base_config(), 1024, 16, 4096)
  c.guide = config_lib.guide_config()
  c.guide.blocks = 'all'  # as the paper configs: MATCH then covers every block (worst case)
  return c
