"""Causal self-attention kernels behind one call: `self_attention(q, k, v, segment_ids, cfg)`.

  xla     explicit float32 scores and softmax, heads-major products, causal query chunks
          (`query_chunks`). Runs everywhere; the CPU's default. Also the decode path
          (`xla_attention` over several key blocks: the KV cache and the new tokens).
  splash  Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention): a
          flash kernel that never holds the [t, s] scores and skips masked blocks. Runs
          under shard_map on the trainer's mesh (batch over data/fsdp, heads over tensor),
          packed documents through SegmentIds, grouped kv heads natively. TPU's default;
          on a CPU it runs in the Pallas interpreter (slow: for tests).
  cudnn   cuDNN flash attention (jax.nn.dot_product_attention(implementation='cudnn')).
          GPU's default when the compute dtype is bfloat16 and the head width fits. Packed
          documents go through its boolean mask (turned into a [b, 1, t, s] bias: correct,
          but cuDNN then reads that bias for every head; a row of one document pays it too).

Every kernel computes the same function: query i of a row attends key j when j <= i, both
are in the same segment (packed document; padding shares one segment id, so no query is
ever without keys) and, with `sliding_window` w > 0, i - j < w (w keys including its own,
as transformers' Mistral/Gemma masks). With `attn_logit_softcap` c > 0 the scaled logits
are c * tanh(logits / c) (Gemma 2) before the mask.

`model.attention_kernel='auto'` chooses by the platform the step is compiled for
(`sharding.platform()`, so `guide_jax.aot` on a CPU host compiles TPU steps with splash),
falling back to xla with one logged line where the chosen kernel cannot take the shapes.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from jax.sharding import PartitionSpec

from guide_jax import sharding

Array = jax.Array

KERNELS = ('auto', 'xla', 'splash', 'cudnn')
SPLASH_LANES = 128   # a splash kv block is a multiple of the TPU's 128 lanes
CUDNN_DTYPES = ('bfloat16',)
CUDNN_MAX_HEAD_DIM = 128


class AttentionError(ValueError):
  """A kernel asked for explicitly that cannot run this config (a one-line message)."""


# --- which kernel ---------------------------------------------------------------------


def splash_problem(cfg: ml_collections.ConfigDict, seq_len: int, platform: str,
                   prefix: str = 'model') -> str:
  """Why splash cannot run a self-attention over seq_len tokens here ('' if it can)."""
  if platform not in ('tpu', 'cpu'):
    return (f"{prefix}.attention_kernel='splash' is a TPU kernel (the CPU runs it in the "
            f"Pallas interpreter, for tests), not for {platform}; use 'auto' or 'xla'")
  for name in ('splash_block_q', 'splash_block_kv'):
    block = min(cfg[name], seq_len)
    if seq_len % block:
      return (f'data.seq_len={seq_len} is not divisible by {prefix}.{name}={cfg[name]}; '
              f'choose a block size that divides it (a multiple of {SPLASH_LANES})')
  kv_block = min(cfg.splash_block_kv, seq_len)
  if kv_block % SPLASH_LANES:
    return (f'data.seq_len={seq_len} needs a splash kv block that is a multiple of '
            f'{SPLASH_LANES} ({prefix}.splash_block_kv={cfg.splash_block_kv}); use a '
            f'sequence length that is a multiple of {SPLASH_LANES}, or '
            f'{prefix}.attention_kernel=xla')
  return ''


def cudnn_problem(cfg: ml_collections.ConfigDict, platform: str, prefix: str = 'model') -> str:
  """Why cuDNN flash attention cannot run this model here ('' if it can)."""
  if platform != 'gpu':
    return (f"{prefix}.attention_kernel='cudnn' needs an NVIDIA GPU, and this step is "
            f"compiled for {platform}; use 'auto' or 'xla'")
  if cfg.dtype not in CUDNN_DTYPES:
    return (f"{prefix}.dtype={cfg.dtype!r}: cuDNN flash attention takes bfloat16; set "
            f"{prefix}.dtype='bfloat16' or {prefix}.attention_kernel='xla'")
  if cfg.head_dim > CUDNN_MAX_HEAD_DIM or cfg.head_dim % 8:
    return (f'{prefix}.head_dim={cfg.head_dim}: cuDNN flash attention takes a multiple of 8 '
            f'up to {CUDNN_MAX_HEAD_DIM}; use {prefix}.attention_kernel=xla')
  if cfg.attn_logit_softcap:
    return (f'{prefix}.attn_logit_softcap={cfg.attn_logit_softcap}: cuDNN flash attention has '
            f'no logit soft-cap; use {prefix}.attention_kernel=xla')
  return ''


_EXPLAINED: set[str] = set()


def choose(cfg: ml_collections.ConfigDict, seq_len: int, platform: str | None = None,
           prefix: str = 'model') -> str:
  """The kernel ('xla', 'splash' or 'cudnn') a self-attention over seq_len tokens runs.
  An explicit kernel that cannot run raises AttentionError (naming fields `prefix`.*);
  'auto' falls back to xla and logs why, once per reason."""
  platform = platform or sharding.platform()
  kernel = cfg.attention_kernel
  if kernel == 'xla':
    return 'xla'
  if kernel == 'splash' or (kernel == 'auto' and platform == 'tpu'):
    problem, chosen = splash_problem(cfg, seq_len, platform, prefix), 'splash'
  elif kernel == 'cudnn' or (kernel == 'auto' and platform == 'gpu'):
    problem, chosen = cudnn_problem(cfg, platform, prefix), 'cudnn'
  else:  # auto on a CPU
    return 'xla'
  if not problem:
    return chosen
  if kernel != 'auto':
    raise AttentionError(problem)
  if problem not in _EXPLAINED:
    _EXPLAINED.add(problem)
    logging.warning("%s.attention_kernel='auto' runs xla attention on %s, not %s: %s",
                    prefix, platform, chosen, problem)
  return 'xla'


# --- the call every self-attention makes -------------------------------------------------


def self_attention(q: Array, k: Array, v: Array, segment_ids: Array,
                   cfg: ml_collections.ConfigDict) -> Array:
  """Causal self-attention [b, t, h, l] of queries q [b, t, h, l] over keys and values
  [b, t, hkv, l] (query head j uses kv head j // (h / hkv)), within segments."""
  kernel = choose(cfg, q.shape[1])
  if kernel == 'splash':
    return splash_attention(q, k, v, segment_ids, cfg)
  if kernel == 'cudnn':
    return fused_sdpa(q, k, v, segment_ids, cfg, implementation='cudnn')
  return chunked_xla_attention(q, k, v, segment_ids, cfg)


def same_segment(segment_ids: Array) -> Array:
  """[b, t, t] boolean: query and key in the same packed segment."""
  return segment_ids[:, :, None] == segment_ids[:, None, :]


def attention_mask(segment_ids: Array, window: int = 0) -> Array:
  """[b, 1, 1, t, t] boolean: causal, within one segment, and within `window` keys."""
  t = segment_ids.shape[1]
  i, j = jnp.arange(t)[:, None], jnp.arange(t)[None, :]
  allowed = (j <= i) & ((i - j < window) if window else True)
  return (allowed[None] & same_segment(segment_ids))[:, None, None]


def softcap(logits: Array, cap: float) -> Array:
  return cap * jnp.tanh(logits / cap) if cap else logits


# --- xla ----------------------------------------------------------------------------------


def query_chunks(cfg: ml_collections.ConfigDict, t: int) -> int:
  """How many causal chunks the xla kernel splits t queries into: `query_chunks` when set;
  0 chooses by the platform the step is compiled for: on a CPU mesh up to 4 chunks of at
  least 64 queries (4 chunks compute 5/8 of the scores, and XLA:CPU ran the attention
  1.4x faster, benchmarks/README.md), one on accelerators."""
  n = cfg.query_chunks or (min(4, t // 64) if sharding.platform() == 'cpu' else 1)
  return max(1, min(n, t))


def chunked_xla_attention(q: Array, k: Array, v: Array, segment_ids: Array,
                          cfg: ml_collections.ConfigDict) -> Array:
  """The xla kernel. The queries in [a, e) need only the keys in [a - w + 1, e) (w the
  window; from 0 without one): with query_chunks(cfg, t) > 1 each chunk of queries attends
  its own span of keys, and the masked rest of the scores is mostly never computed. Equal
  to one chunk up to float rounding."""
  t, window = q.shape[1], cfg.sliding_window
  mask = attention_mask(segment_ids, window)
  n = query_chunks(cfg, t)
  bounds = [round(i * t / n) for i in range(n + 1)]
  outs = []
  for a, e in zip(bounds, bounds[1:]):
    start = max(0, a - window + 1) if window else 0
    outs.append(xla_attention(q[:, a:e], (k[:, start:e], v[:, start:e],
                                          mask[..., a:e, start:e]),
                              cap=cfg.attn_logit_softcap))
  return outs[0] if n == 1 else jnp.concatenate(outs, axis=1)


def xla_attention(q: Array, *blocks: tuple[Array, Array, Array], cap: float = 0.0) -> Array:
  """Queries q [b, t, h, l] over one or more blocks of (keys, values [b, s, hkv, l], mask
  [b, 1, 1, t, s]) with one softmax over all of them: decoding passes the KV cache and the
  new tokens as two blocks, so the cache is read in place and never concatenated."""
  dt = q.dtype
  b, t, h, l = q.shape
  hkv = blocks[0][0].shape[2]
  # Heads-major operands ([b, hkv, group, t, l] and [b, hkv, s, l]) make both products
  # plain batched matmuls: XLA:CPU ran the attention 1.3-1.5x faster than with the head
  # axes between t and l (benchmarks/README.md); accelerators pick layouts themselves.
  q = q.reshape(b, t, hkv, h // hkv, l).transpose(0, 2, 3, 1, 4)
  logits = [jnp.where(mask, softcap(jnp.einsum(
      'bkgtl,bksl->bkgts', q, k.transpose(0, 2, 1, 3),
      preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(l)), cap),
                      jnp.finfo(jnp.float32).min)
            for k, _, mask in blocks]
  if len(blocks) == 1:
    probs = [jax.nn.softmax(logits[0], axis=-1)]
  else:  # the softmax over the blocks' keys together
    top = jax.lax.stop_gradient(functools.reduce(
        jnp.maximum, [x.max(axis=-1, keepdims=True) for x in logits]))
    weights = [jnp.exp(x - top) for x in logits]
    total = functools.reduce(jnp.add, [w.sum(axis=-1, keepdims=True) for w in weights])
    probs = [w / total for w in weights]
  out = functools.reduce(jnp.add, [
      jnp.einsum('bkgts,bksl->bkgtl', p.astype(dt), v.transpose(0, 2, 1, 3),
                 preferred_element_type=jnp.float32)
      for p, (_, v, _) in zip(probs, blocks)])
  return out.astype(dt).transpose(0, 3, 1, 2, 4).reshape(b, t, h, l)


# --- cuDNN ---------------------------------------------------------------------------------


def fused_sdpa(q: Array, k: Array, v: Array, segment_ids: Array,
               cfg: ml_collections.ConfigDict, implementation: str = 'cudnn') -> Array:
  """jax.nn.dot_product_attention with the causal mask and window as its own arguments
  (cuDNN skips what they exclude) and the segments as a boolean mask. `implementation`
  'xla' runs the same call anywhere: the tests check the arguments that way on a CPU."""
  window = cfg.sliding_window
  return jax.nn.dot_product_attention(
      q, k, v, mask=same_segment(segment_ids)[:, None], is_causal=True,
      local_window_size=(window - 1, 0) if window else None, implementation=implementation)


# --- splash --------------------------------------------------------------------------------


def _splash_kernel(heads: int, t: int, window: int, cap: float, block_q: int,
                   block_kv: int, interpret: bool):
  """The splash kernel for this shape and setting, built inside the trace that uses it (its
  mask tables become that trace's constants; caching the kernel across traces would leak
  them). The costly part, the mask's block structure, is computed on the host from a lazy
  mask (never a [t, t] array) and cached by jax per shape."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  mask = (splash.LocalMask((t, t), (window - 1, 0), offset=0) if window
          else splash.CausalMask((t, t)))
  bq, bkv = min(block_q, t), min(block_kv, t)
  blocks = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv,
                             block_q_dkv=bq, block_kv_dkv=bkv, block_kv_dkv_compute=bkv,
                             block_q_dq=bq, block_kv_dq=bkv)
  return splash.make_splash_mha(splash.MultiHeadMask([mask] * heads), block_sizes=blocks,
                                head_shards=1, q_seq_shards=1,
                                attn_logits_soft_cap=cap or None, interpret=interpret)


def _spec(axes, x, mesh, rules) -> PartitionSpec:
  spec = tuple(sharding.spec_for(axes, rules, x.shape, mesh))
  return PartitionSpec(*spec, *[None] * (len(axes) - len(spec)))


def splash_attention(q: Array, k: Array, v: Array, segment_ids: Array,
                     cfg: ml_collections.ConfigDict) -> Array:
  """The splash kernel, per example (vmap) and per device (shard_map over the current
  mesh: rows over the batch axes, heads over the heads' axis; grouped kv heads stay with
  their queries when that axis divides the kv heads, else they are repeated to one per
  query head first)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash
  b, t, h, l = q.shape
  interpret = sharding.platform() == 'cpu'
  # Heads-major [b, heads, t, l]; the kernel applies no 1/sqrt(l): scale the queries.
  q = (q * jnp.asarray(1.0 / math.sqrt(l), q.dtype)).transpose(0, 2, 1, 3)
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

  def per_device(q, k, v, segment_ids):
    kernel = _splash_kernel(q.shape[1], t, cfg.sliding_window, float(cfg.attn_logit_softcap),
                            cfg.splash_block_q, cfg.splash_block_kv, interpret)
    return jax.vmap(lambda q, k, v, s: kernel(q, k, v, segment_ids=splash.SegmentIds(s, s)))(
        q, k, v, segment_ids)

  mesh, rules = jax.sharding.get_abstract_mesh(), sharding.active_rules()
  if mesh.empty or rules is None:
    out = per_device(q, k, v, segment_ids)
  else:
    axes = ('act_batch', 'act_heads', None, None)
    q_spec, kv_spec = _spec(axes, q, mesh, rules), _spec(axes, k, mesh, rules)
    if kv_spec[1] != q_spec[1]:  # the heads' axis splits the query heads but not kv's
      k, v = (jnp.repeat(x, h // k.shape[1], axis=1) for x in (k, v))
      kv_spec = q_spec
    out = jax.shard_map(per_device, mesh=mesh,
                        in_specs=(q_spec, kv_spec, kv_spec, PartitionSpec(q_spec[0])),
                        out_specs=q_spec, check_vma=False)(q, k, v, segment_ids)
  return out.transpose(0, 2, 1, 3)
