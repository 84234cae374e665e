"""Decoder-only Transformer in Flax NNX, laid out in GUIDE_METHOD.md's notation.

Shapes (d = d_model, h = n_heads, h_kv = n_kv_heads, l = head_dim, f = mlp_dim):
  embedding [V, d]              pos_embedding [L, d]        unembed [d, V]
  blocks.attn.wq  [n, d, h, l]  wk, wv [n, d, h_kv, l]      wo [n, h, l, d]
  blocks.mlp.w_in [n, d, f] (gelu) or w_gate, w_up [n, d, f] (swiglu, geglu); w_out [n, f, d]
  blocks.norm1/norm2.scale [n, d]   final_norm.scale [d]   (+ .bias for layernorm)
  blocks.post_attn_norm/post_mlp_norm.scale [n, d]   (post_norms: Gemma 2/3's sandwich)
  blocks.attn.q_norm/k_norm.scale [n, l]   (qk_norm)
  blocks.attn.bq [n, h, l], bk, bv [n, h_kv, l] (use_bias or qkv_bias); bo [n, d] (use_bias)

The family features of Hugging Face checkpoints are config fields (config.model_config):
norm gain offset (Gemma's 1 + w), per-head q/k RMSNorm (Qwen3), q/k/v-only biases (Qwen2),
gated GELU (Gemma), Llama 3 and linear RoPE frequency scaling, a sliding attention window
(Mistral: every layer), a per-layer pattern of local (windowed) and global layers with their
own RoPE bases (`layer_types`: Gemma 2's alternation, Gemma 3's 5 local : 1 global), norms
after the attention and the MLP as well as before (`post_norms`), attention logits scaled by
`query_pre_attn_scalar` and soft-capped, and a final logit soft-cap (Gemma 2).
Self-attention runs through `attention.py`, which picks the kernel (XLA, Pallas splash on
TPU, cuDNN on GPU; `model.attention_kernel`).

A layer's kind (local 1, global 0) is data: the layer scan carries it beside the layer's
parameters, and the attention picks its window and RoPE by it (`lax.cond` between the two
kernels in training, a select of masks and frequencies in decoding). So scanned and
unrolled models compute the same function.

Block parameters are always stacked along a leading `layers` axis, whether or not the
forward pass scans over them: one layout for checkpoints and for GUIDE, whose code reads
and writes `params['blocks'][...][i]` for teacher/student block i.

Every parameter carries its logical axis names as NNX `out_sharding` metadata (with eager
sharding off: `guide_jax.sharding` maps names to mesh axes explicitly, with the config's
rules, and creates parameters directly sharded under `jax.jit(out_shardings=...)`).

Query head j uses key/value head j // (h / h_kv): heads are ordered group-major, which is
what GUIDE's kv-group selection relies on.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from guide_jax import sharding
from guide_jax.models import attention

Array = jax.Array

REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    # Keeps the attention's q/k/v and output projections (tagged below); recomputes the
    # MLP, whose [b, t, mlp] activations are most of what 'dots' keeps (MaxText's policy of
    # the same name).
    'save_dot_except_mlp': jax.checkpoint_policies.save_only_these_names(
        'query_proj', 'key_proj', 'value_proj', 'out_proj'),
}


def scans_layers(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the forward pass scans over the blocks: `scan_layers`, except on a CPU mesh
  with `unroll_on_cpu`, where XLA runs the unrolled loop faster. Chosen by the platform the
  step is compiled for, never forced on accelerators."""
  return cfg.scan_layers and not (cfg.unroll_on_cpu and sharding.platform() == 'cpu')


def _param(key, shape, axes, std, dtype) -> nnx.Param:
  """A normally initialised parameter annotated with logical axes."""
  value = std * jax.random.normal(key, shape, dtype) if std else jnp.zeros(shape, dtype)
  return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def _const_param(value, shape, axes, dtype) -> nnx.Param:
  return nnx.Param(jnp.full(shape, value, dtype), out_sharding=axes, eager_sharding=False)


def _dot(x, w, spec, dtype):
  """einsum in the compute dtype with float32 accumulation, result in the compute dtype."""
  return jnp.einsum(spec, x.astype(dtype), w.astype(dtype),
                    preferred_element_type=jnp.float32).astype(dtype)


class Norm(nnx.Module):
  """RMSNorm or LayerNorm over the last axis, computed in float32.

  The gain is `norm_scale_offset + scale`: offset 0 is the usual parameterisation, 1 is
  Gemma's `1 + w`. Either way the gain starts at 1. `dim`/`kind`/`axis` default to the
  residual stream's; q/k norms pass the head width, RMSNorm and their own logical axis.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, dim: int | None = None,
               kind: str | None = None, axis: str = 'embed'):
    d, pdt = dim or cfg.d_model, jnp.dtype(cfg.param_dtype)
    self.kind, self.eps, self.offset = kind or cfg.norm, cfg.norm_eps, cfg.norm_scale_offset
    self.scale = _const_param(1.0 - self.offset, (d,), (axis,), pdt)
    if self.kind == 'layernorm':
      self.bias = _const_param(0.0, (d,), (axis,), pdt)

  def __call__(self, x: Array) -> Array:
    y = x.astype(jnp.float32)
    if self.kind == 'layernorm':
      y = y - jnp.mean(y, axis=-1, keepdims=True)
    y = y * jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + self.eps)
    y = y * (self.offset + self.scale[...].astype(jnp.float32))
    if self.kind == 'layernorm':
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(x.dtype)


def rope_frequencies(head_dim: int, cfg: ml_collections.ConfigDict) -> Array:
  """1 / base^(2k/l) for rotary pair k = 0..l/2-1 (pair k = dims k and k + l/2), written as
  transformers computes it; with rope_scaling='llama3', Llama 3.1's rescaling: wavelengths
  beyond original_max_len/low_freq_factor slow down by `factor`, those below
  original_max_len/high_freq_factor stay, and the band between is interpolated."""
  freqs = 1.0 / (cfg.rope_base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if cfg.rope_scaling == 'none':
    return freqs
  if cfg.rope_scaling == 'linear':  # positions slowed down by `factor` (Gemma 3's global layers)
    return freqs / cfg.rope_scaling_factor
  factor, low, high = cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
  original = cfg.rope_original_max_len
  wavelen = 2 * jnp.pi / freqs
  scaled = jnp.where(wavelen > original / low, freqs / factor, freqs)
  smooth = (original / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = (wavelen >= original / high) & (wavelen <= original / low)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x: Array, positions: Array, freqs: Array) -> Array:
  """Rotary embedding, 'split halves' layout. x: [b, t, heads, l], positions: [b, t],
  freqs [l/2] (rope_frequencies)."""
  angles = positions.astype(jnp.float32)[:, :, None, None] * freqs  # [b, t, 1, l/2]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


LOCAL = 'local'  # a layer_types entry; the other is 'global'


def layer_kinds(cfg: ml_collections.ConfigDict) -> tuple[int, ...]:
  """Per layer 1 (local: windowed, its own RoPE) or 0 (global), from `layer_types`; ()
  when every layer is alike (`sliding_window` then applies to all of them)."""
  if not cfg.layer_types:
    return ()
  return tuple(int(kind.strip() == LOCAL) for kind in cfg.layer_types.split(','))


def kind_config(cfg: ml_collections.ConfigDict, local: bool) -> ml_collections.ConfigDict:
  """The attention config of a local or a global layer of a model with `layer_types`: a
  local layer has the window, `local_rope_base` and no RoPE scaling; a global one no window
  and the model's RoPE. Without layer_types, the model's own config."""
  if not cfg.layer_types:
    return cfg
  out = ml_collections.ConfigDict(cfg.to_dict())
  if local:
    out.rope_base = cfg.local_rope_base or cfg.rope_base
    out.rope_scaling = 'none'
  else:
    out.sliding_window = 0
  out.layer_types = ''
  return out


def by_kind(kind, fn):
  """fn(local) for a layer of kind `kind`: None (every layer alike) -> fn(False) on the
  model's own config; a Python int -> fn of it; traced (the layer scan) -> lax.cond."""
  if kind is None or isinstance(kind, int):
    return fn(bool(kind))
  return jax.lax.cond(kind == 1, lambda: fn(True), lambda: fn(False))


class Attention(nnx.Module):
  """Grouped-query attention with optional RoPE; weights in [d, heads, head_dim] layout."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    d, h, hkv, l = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pdt, std = jnp.dtype(cfg.param_dtype), cfg.init_std
    self.cfg = cfg
    self.kind_cfgs = (kind_config(cfg, False), kind_config(cfg, True))
    self.wq = _param(rngs.params(), (d, h, l), ('embed', 'heads', 'kv'), std, pdt)
    self.wk = _param(rngs.params(), (d, hkv, l), ('embed', 'kv_heads', 'kv'), std, pdt)
    self.wv = _param(rngs.params(), (d, hkv, l), ('embed', 'kv_heads', 'kv'), std, pdt)
    # Output projection scaled down with depth (GPT-2 style) so the residual stream's size
    # does not grow with n_layers at init.
    out_std = std / (2 * cfg.n_layers) ** 0.5
    self.wo = _param(rngs.params(), (h, l, d), ('heads', 'kv', 'embed'), out_std, pdt)
    self.qkv_bias = cfg.use_bias or cfg.qkv_bias
    if self.qkv_bias:
      self.bq = _param(None, (h, l), ('heads', 'kv'), 0.0, pdt)
      self.bk = _param(None, (hkv, l), ('kv_heads', 'kv'), 0.0, pdt)
      self.bv = _param(None, (hkv, l), ('kv_heads', 'kv'), 0.0, pdt)
    if cfg.use_bias:
      self.bo = _param(None, (d,), ('embed',), 0.0, pdt)
    if cfg.qk_norm:  # one gain per head dim, shared by the heads (Qwen3)
      self.q_norm = Norm(cfg, dim=l, kind='rmsnorm', axis='kv')
      self.k_norm = Norm(cfg, dim=l, kind='rmsnorm', axis='kv')

  def freqs(self, kind) -> Array:
    """The RoPE frequencies of a layer of kind `kind` (None, an int, or traced: a select)."""
    l = self.cfg.head_dim
    if kind is None or isinstance(kind, int):
      return rope_frequencies(l, self.kind_cfgs[bool(kind)])
    return jnp.where(kind == 1, rope_frequencies(l, self.kind_cfgs[1]),
                     rope_frequencies(l, self.kind_cfgs[0]))

  def qkv(self, u: Array, positions: Array, kind=None) -> tuple[Array, Array, Array]:
    """Queries [b, t, h, l], keys and values [b, t, hkv, l] of the inputs u at `positions`
    (queries scaled so that the kernels' 1/sqrt(l) makes 1/sqrt(query_pre_attn_scalar))."""
    cfg, dt = self.cfg, jnp.dtype(self.cfg.dtype)
    q = _dot(u, self.wq[...], 'btd,dhl->bthl', dt)
    k = _dot(u, self.wk[...], 'btd,dhl->bthl', dt)
    v = _dot(u, self.wv[...], 'btd,dhl->bthl', dt)
    if self.qkv_bias:
      q, k, v = q + self.bq[...].astype(dt), k + self.bk[...].astype(dt), v + self.bv[...].astype(dt)
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    if cfg.position == 'rope':
      freqs = self.freqs(kind)
      q, k = apply_rope(q, positions, freqs), apply_rope(k, positions, freqs)
    if cfg.query_pre_attn_scalar:
      q = q * jnp.asarray((cfg.head_dim / cfg.query_pre_attn_scalar) ** 0.5, dt)
    q = sharding.constrain(q, ('act_batch', 'act_length', 'act_heads', 'act_kv'))
    return (checkpoint_name(q, 'query_proj'), checkpoint_name(k, 'key_proj'),
            checkpoint_name(v, 'value_proj'))

  def attend(self, q: Array, *blocks: tuple[Array, Array, Array]) -> Array:
    """Output [b, t, d] of queries q over one or more blocks of (keys, values [b, s, hkv, l],
    mask [b, 1, 1, t, s]) with one softmax (attention.xla_attention): the KV-cache path."""
    return self.project_out(attention.xla_attention(q, *blocks,
                                                    cap=self.cfg.attn_logit_softcap))

  def project_out(self, out: Array) -> Array:
    """[b, t, h, l] -> [b, t, d] through W_O (and its bias)."""
    dt = jnp.dtype(self.cfg.dtype)
    y = _dot(out, self.wo[...], 'bthl,hld->btd', dt)
    if self.cfg.use_bias:
      y = y + self.bo[...].astype(dt)
    return checkpoint_name(y, 'out_proj')

  def __call__(self, u: Array, positions: Array, segment_ids: Array, kind=None) -> Array:
    """Causal self-attention of u [b, t, d] within its packed segments, by the kernel
    attention.choose picks (model.attention_kernel), with the window of the layer's kind."""
    q, k, v = self.qkv(u, positions, kind)
    out = by_kind(kind, lambda local: attention.self_attention(q, k, v, segment_ids,
                                                               self.kind_cfgs[local]))
    return self.project_out(out)


GATED_MLPS = {'swiglu': jax.nn.silu, 'geglu': functools.partial(jax.nn.gelu, approximate=True)}


class MLP(nnx.Module):
  """gelu: gelu_tanh(u W_in) W_out; swiglu/geglu: (act(u W_gate) * (u W_up)) W_out with
  act = silu (Llama, Qwen) or gelu_tanh (Gemma)."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    d, f = cfg.d_model, cfg.mlp_dim
    pdt, std = jnp.dtype(cfg.param_dtype), cfg.init_std
    self.cfg = cfg
    read_names = ('w_gate', 'w_up') if cfg.mlp in GATED_MLPS else ('w_in',)
    for name in read_names:
      setattr(self, name, _param(rngs.params(), (d, f), ('embed', 'mlp'), std, pdt))
    out_std = std / (2 * cfg.n_layers) ** 0.5
    self.w_out = _param(rngs.params(), (f, d), ('mlp', 'embed'), out_std, pdt)
    if cfg.use_bias:
      for name in read_names:
        setattr(self, 'b' + name[1:], _param(None, (f,), ('mlp',), 0.0, pdt))
      self.b_out = _param(None, (d,), ('embed',), 0.0, pdt)

  def _read(self, u, name, dt):
    y = _dot(u, getattr(self, name)[...], 'btd,df->btf', dt)
    if self.cfg.use_bias:
      y = y + getattr(self, 'b' + name[1:])[...].astype(dt)
    return y

  def __call__(self, u: Array) -> Array:
    dt = jnp.dtype(self.cfg.dtype)
    if self.cfg.mlp in GATED_MLPS:
      act = GATED_MLPS[self.cfg.mlp]
      hidden = act(self._read(u, 'w_gate', dt)) * self._read(u, 'w_up', dt)
    else:
      hidden = jax.nn.gelu(self._read(u, 'w_in', dt), approximate=True)
    hidden = sharding.constrain(hidden, ('act_batch', 'act_length', 'act_mlp'))
    y = _dot(hidden, self.w_out[...], 'btf,fd->btd', dt)
    if self.cfg.use_bias:
      y = y + self.b_out[...].astype(dt)
    return y


class Block(nnx.Module):
  """Pre-norm block: x += Attn(N1(x)); x += MLP(N2(x)). With post_norms (Gemma 2/3's
  sandwich): x += Np1(Attn(N1(x))); x += Np2(MLP(N2(x)))."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.norm1 = Norm(cfg)
    self.attn = Attention(cfg, rngs=rngs)
    self.norm2 = Norm(cfg)
    self.mlp = MLP(cfg, rngs=rngs)
    self.post_norms = cfg.post_norms
    if cfg.post_norms:
      self.post_attn_norm = Norm(cfg)
      self.post_mlp_norm = Norm(cfg)

  def _attention_write(self, y):
    return self.post_attn_norm(y) if self.post_norms else y

  def attention_residual(self, x, positions, segment_ids, kind=None):
    return x + self._attention_write(self.attn(self.norm1(x), positions, segment_ids, kind))

  def __call__(self, x, positions, segment_ids, kind=None):
    x = self.attention_residual(x, positions, segment_ids, kind)
    return self.mlp_residual(x)

  def mlp_residual(self, x):
    y = self.mlp(self.norm2(x))
    x = x + (self.post_mlp_norm(y) if self.post_norms else y)
    return sharding.constrain(x, ('act_batch', 'act_length', 'act_embed'))

  def cached(self, x, positions, cache_k, cache_v, masks, kind=None):
    """The block over new tokens x [b, t, d] attending to the cache [b, S, hkv, l] and to
    each other, under masks[local] = (over the cache [b, 1, 1, t, S], over the new tokens
    [b, 1, 1, t, t]) for the layer's kind. Returns (x, the new tokens' keys, values) for the
    caller to write into the cache."""
    q, k, v = self.attn.qkv(self.norm1(x), positions, kind)
    if kind is None or isinstance(kind, int):
      cache_mask, new_mask = masks[bool(kind)]
    else:
      cache_mask, new_mask = (jnp.where(kind == 1, a, b) for a, b in zip(masks[1], masks[0]))
    y = self.attn.attend(q, (cache_k, cache_v, cache_mask), (k, v, new_mask))
    return self.mlp_residual(x + self._attention_write(y)), k, v


class Transformer(nnx.Module):
  """x0 = c*E[z] + P[pos]; blocks; logits = Nf(x) @ E^T (tied) or Nf(x) @ W_U."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pdt, std = jnp.dtype(cfg.param_dtype), cfg.init_std
    self.embedding = _param(rngs.params(), (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'),
                            std, pdt)
    if cfg.position == 'learned':
      self.pos_embedding = _param(rngs.params(), (cfg.max_len, cfg.d_model),
                                  ('max_len', 'embed'), std, pdt)
    keys = jax.random.split(rngs.params(), cfg.n_layers)

    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
    def make_blocks(key):
      return Block(cfg, rngs=nnx.Rngs(params=key))

    self.blocks = make_blocks(keys)
    self.final_norm = Norm(cfg)
    if not cfg.tie_embeddings:
      self.unembed = _param(rngs.params(), (cfg.d_model, cfg.vocab_size), ('embed', 'vocab'),
                            std, pdt)

  @property
  def embed_scale(self) -> float:
    return float(self.cfg.d_model) ** 0.5 if self.cfg.scale_embeddings else 1.0

  def embed_inputs(self, tokens: Array, positions: Array) -> Array:
    """x0 = c * E[z] + P[pos], in the compute dtype."""
    dt = jnp.dtype(self.cfg.dtype)
    x = jnp.take(self.embedding[...], tokens, axis=0).astype(jnp.float32)
    x = x * self.embed_scale
    if self.cfg.position == 'learned':
      x = x + jnp.take(self.pos_embedding[...], positions, axis=0).astype(jnp.float32)
    return sharding.constrain(x.astype(dt), ('act_batch', 'act_length', 'act_embed'))

  def layer(self, i: int) -> Block:
    """Block i as a module of its own (a view of the stacked parameters)."""
    graphdef, state = nnx.split(self.blocks)
    return nnx.merge(graphdef, jax.tree.map(lambda a: a[i], state))

  def hidden(self, tokens: Array, positions: Array, segment_ids: Array) -> Array:
    """Final-normed residual stream [b, t, d]: what the output layer reads."""
    cfg = self.cfg
    x = self.embed_inputs(tokens, positions)
    graphdef, state = nnx.split(self.blocks)
    kinds = layer_kinds(cfg)

    def apply_block(x, layer_state, kind):
      return nnx.merge(graphdef, layer_state)(x, positions, segment_ids, kind)

    def remat(fn):
      if cfg.remat == 'none':
        return fn
      return jax.checkpoint(fn, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not scan)

    scan = scans_layers(cfg)
    if scan:  # the kinds ride along as scan data (None: no pattern, nothing to carry)
      step = remat(lambda x, layer: (apply_block(x, *layer), None))
      x, _ = jax.lax.scan(step, x, (state, jnp.array(kinds, jnp.int32) if kinds else None))
    else:  # unrolled, each layer's kind is a Python int: no cond
      for i in range(cfg.n_layers):
        kind = kinds[i] if kinds else None
        x = remat(functools.partial(apply_block, kind=kind))(
            x, jax.tree.map(lambda a, i=i: a[i], state))
    return self.final_norm(x)

  def cached(self, tokens: Array, positions: Array, cache: dict, slot: Array,
             masks: tuple) -> tuple[Array, dict]:
    """Logits [b, t, V] of new tokens given a KV cache {'k', 'v'}: [layers, b, S, hkv, l],
    and the cache with their keys/values written at slots [slot, slot + t) (in place when
    the caller donates it). masks = ((cache, new-token) masks of a global layer, those of a
    local one): guide_jax.infer.sampler builds them."""
    x = self.embed_inputs(tokens, positions)
    graphdef, state = nnx.split(self.blocks)
    kinds = layer_kinds(self.cfg)

    def apply_block(x, layer):
      layer_state, cache_k, cache_v, kind = layer
      x, k, v = nnx.merge(graphdef, layer_state).cached(x, positions, cache_k, cache_v,
                                                        masks, kind)
      return x, (k, v)

    x, (k, v) = jax.lax.scan(apply_block, x, (state, cache['k'], cache['v'],
                                              jnp.array(kinds, jnp.int32) if kinds else None))
    cache = {'k': jax.lax.dynamic_update_slice_in_dim(cache['k'], k.astype(cache['k'].dtype),
                                                      slot, 2),
             'v': jax.lax.dynamic_update_slice_in_dim(cache['v'], v.astype(cache['v'].dtype),
                                                      slot, 2)}
    return self.logits_from_hidden(self.final_norm(x)), cache

  def output_kernel(self) -> Array:
    """[d, V]: the tied E^T or the untied W_U."""
    if self.cfg.tie_embeddings:
      return self.embedding[...].T
    return self.unembed[...]

  def logits_from_hidden(self, h: Array) -> Array:
    """float32 logits [b, t, V] (soft-capped with final_logit_softcap)."""
    dt = jnp.dtype(self.cfg.dtype)
    logits = jnp.einsum('btd,dv->btv', h.astype(dt), self.output_kernel().astype(dt),
                        preferred_element_type=jnp.float32)
    logits = attention.softcap(logits, self.cfg.final_logit_softcap)
    return sharding.constrain(logits, ('act_batch', 'act_length', 'act_vocab'))

  def __call__(self, tokens: Array, positions: Array, segment_ids: Array) -> Array:
    return self.logits_from_hidden(self.hidden(tokens, positions, segment_ids))


# ---------------------------------------------------------------------------------------
# Functional interface: parameters are a plain nested dict of arrays everywhere outside
# this file (train state, checkpoints, GUIDE). The module graph is rebuilt from the config.


@functools.lru_cache(maxsize=32)
def _graphdef_and_abstract(cfg_json: str):
  cfg = ml_collections.ConfigDict(__import__('json').loads(cfg_json))
  # jax.eval_shape, not nnx.eval_shape: the latter attaches shardings from the logical
  # names when a mesh is active, and logical names are not mesh axes.
  return jax.eval_shape(lambda: nnx.split(Transformer(cfg, rngs=nnx.Rngs(0))))


def _key(cfg: ml_collections.ConfigDict) -> str:
  return cfg.to_json(sort_keys=True)


def graphdef(cfg: ml_collections.ConfigDict):
  return _graphdef_and_abstract(_key(cfg))[0]


def abstract_params(cfg: ml_collections.ConfigDict) -> dict:
  """Nested dict of jax.ShapeDtypeStruct for every parameter."""
  return nnx.to_pure_dict(_graphdef_and_abstract(_key(cfg))[1])


def abstract_params_and_shardings(cfg: ml_collections.ConfigDict, mesh, rules):
  """(abstract_params(cfg), their NamedShardings on `mesh` under the logical `rules`)."""
  shapes = abstract_params(cfg)
  return shapes, sharding.tree_shardings(shapes, logical_axes(cfg), mesh, rules)


def logical_axes(cfg: ml_collections.ConfigDict) -> dict:
  """Nested dict (same structure as the params) of logical axis-name tuples."""
  state = _graphdef_and_abstract(_key(cfg))[1]
  flat, _ = jax.tree_util.tree_flatten_with_path(
      state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  out: dict = {}
  for path, var in flat:
    *parents, leaf = [k.key for k in path]
    node = out
    for k in parents:
      node = node.setdefault(k, {})
    node[leaf] = tuple(var.get_metadata()['out_sharding'])
  return out


def init_params(cfg: ml_collections.ConfigDict, key: Array) -> dict:
  """Random initial parameters (call under jax.jit with out_shardings to create them sharded)."""
  return nnx.to_pure_dict(nnx.state(Transformer(cfg, rngs=nnx.Rngs(params=key))))


def bind(cfg: ml_collections.ConfigDict, params: dict) -> Transformer:
  """The module with these parameter values (cheap: traced once per jit)."""
  return nnx.merge(graphdef(cfg), params)


def apply(cfg: ml_collections.ConfigDict, params: dict, batch: dict[str, Any]) -> Array:
  """float32 logits [b, t, V] for a packed batch."""
  return bind(cfg, params)(batch['inputs'], batch['positions'], batch['segment_ids'])


def count_params(params: dict) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(params))
