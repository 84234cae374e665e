"""Analytic model FLOPs and the device peak, for MFU.

FLOPs count matmuls only (2 per multiply-add), attention scores and values included at
their full (non-causal) size as in the PaLM/MaxText convention; a training step costs 3x
the forward pass (forward + backward w.r.t. activations and weights).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import ml_collections

# Dense bf16 peak FLOP/s per device, by jax `device_kind` prefix.
KNOWN_PEAK_FLOPS = {
    'TPU v4': 275e12, 'TPU v5 lite': 197e12, 'TPU v5e': 197e12, 'TPU v5p': 459e12,
    'TPU v5': 459e12, 'TPU v6 lite': 918e12, 'TPU v6e': 918e12,
    'NVIDIA H100': 989e12, 'NVIDIA H200': 989e12, 'NVIDIA A100': 312e12,
}


def forward_flops_per_token(m: ml_collections.ConfigDict, seq_len: int) -> float:
  d, h, hkv, l, f = m.d_model, m.n_heads, m.n_kv_heads, m.head_dim, m.mlp_dim
  projections = 2 * d * (h * l + 2 * hkv * l) + 2 * h * l * d
  scores_and_values = 2 * 2 * h * l * seq_len
  mlp = 2 * d * f * (3 if m.mlp == 'swiglu' else 2)
  return m.n_layers * (projections + scores_and_values + mlp) + 2 * d * m.vocab_size


def train_flops_per_token(m: ml_collections.ConfigDict, seq_len: int) -> float:
  return 3 * forward_flops_per_token(m, seq_len)


@functools.lru_cache(maxsize=None)
def measured_matmul_peak(dtype: str = 'float32', n: int = 2048, repeats: int = 5) -> float:
  """Best FLOP/s of a jitted n^3 matmul in `dtype` with float32 accumulation."""
  x = jnp.ones((n, n), jnp.dtype(dtype))
  mm = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  mm(x, x).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    mm(x, x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best


def device_peak_flops(dtype: str, configured: float = 0.0) -> tuple[float, str]:
  """(per-device peak FLOP/s, where it came from)."""
  if configured > 0:
    return configured, 'config'
  kind = jax.devices()[0].device_kind
  for prefix, peak in KNOWN_PEAK_FLOPS.items():
    if kind.startswith(prefix):
      return peak, f'table ({kind})'
  # CPU (or an unknown chip): measure. Fake multi-device CPU meshes share the same cores,
  # so the whole host's measured peak is the budget of all its devices together.
  return measured_matmul_peak(dtype) / jax.local_device_count(), f'measured matmul ({kind})'
