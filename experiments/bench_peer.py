"""Benchmark config matched by the PyTorch peer (benchmarks/torch_peer.py): guide_jax's step
against a plain eager PyTorch loop of the same model, on this CPU.

  python -m guide_jax.bench --config=experiments/bench_peer.py --arms=baseline,kd --peer
  python -m guide_jax.bench --config=experiments/bench_peer.py:d512 --arms=baseline,kd --peer
  # bfloat16 matmuls (float32 parameters) on both sides:
  python -m guide_jax.bench --config=experiments/bench_peer.py --arms=baseline,kd --peer \
      --config.model.dtype=bfloat16 --config.teacher.pretrain.model.dtype=bfloat16

Student: d 256, 4 blocks, 4 heads of 64, GELU MLP 1024, LayerNorm, learned positions, tied
4096 vocabulary (the model of issue 13's measurement); `:d512` doubles the width (8 heads,
MLP 2048). The teacher of the KD arm is twice as wide. Batch 16 x 256, AdamW, synthetic
tokens; one process, the two frameworks' steps interleaved round by round.
"""

from guide_jax import config as config_lib


def _model(c, d, heads, mlp):
  """bench_cpu.py's model (the same widths, batch and synthetic data), with the GELU MLP
  and LayerNorm of issue 13's measurement."""
  c = config_lib.load_experiment_module('bench_cpu')._model(c, d, heads, mlp)
  c.model.mlp = 'gelu'
  c.model.norm = 'layernorm'
  return c


def get_config(arg: str | None = None):
  d = 512 if arg == 'd512' else 256
  if arg not in (None, 'd512'):
    raise config_lib.ConfigError(f'experiments/bench_peer.py:{arg}: the only variant is d512')
  c = _model(config_lib.base_config(), d, d // 64, 4 * d)
  c.teacher.pretrain = _model(config_lib.base_config(), 2 * d, 2 * d // 64, 8 * d)
  c.guide = config_lib.guide_config()
  c.guide.blocks = 'all'
  return c
