"""Hugging Face families: config mapping and one parameter table per family.

A family is (a) `model_config(hf_config)`: the guide_jax model config of a Hugging Face
`config.json`, refusing by name every field it cannot reproduce exactly, (b)
`hf_config(model)`: the reverse, and (c) `tensors(model)`: a table of `Tensor` rows, each
tying one Hugging Face tensor (per layer where its name holds `{i}`) to one guide_jax leaf.
Import and export are both derived from the same table, so the two directions cannot
drift apart.

Layouts (guide_jax leaves keep their input axes first, see models/transformer.py):
  'copy'    same values, reshaped (norm gains, biases [h*l] <-> [h, l], embeddings);
  'linear'  torch Linear weight [out, in] <-> ours [in..., out...] (a transpose);
  'conv1d'  GPT-2's Conv1D weight [in, out] <-> ours [in..., out...] (a reshape).
`n_in` says how many leading axes of our leaf are the input (wo [h, l, d]: 2). `part`
(k, n) marks the k-th of n equal slices of a fused tensor's last axis (GPT-2's c_attn).
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections
import numpy as np

from guide_jax import config as config_lib


class HFError(config_lib.ConfigError):
  """A Hugging Face checkpoint or config this framework refuses. Names the field."""


@dataclasses.dataclass(frozen=True)
class Tensor:
  hf: str                  # name in the checkpoint; '{i}' = the layer index
  ours: tuple[str, ...]    # path of the guide_jax leaf
  layout: str = 'copy'
  n_in: int = 1
  part: tuple[int, int] | None = None

  @property
  def layered(self) -> bool:
    return '{i}' in self.hf

  def to_ours(self, value: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A Hugging Face tensor -> our leaf of `shape` (one layer's slice for block leaves)."""
    if self.part is not None:
      k, n = self.part
      width = value.shape[-1] // n
      value = value[..., k * width:(k + 1) * width]
    if self.layout == 'linear':
      value = value.T
    return np.ascontiguousarray(value.reshape(shape))

  def hf_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape `to_hf` gives for our leaf (one layer) of `shape` (this row's part)."""
    if self.layout == 'copy':
      return (math.prod(shape),) if len(shape) > 1 and self.hf.endswith('.bias') else shape
    n_in, n_out = math.prod(shape[:self.n_in]), math.prod(shape[self.n_in:])
    return (n_out, n_in) if self.layout == 'linear' else (n_in, n_out)

  def to_hf(self, value: np.ndarray) -> np.ndarray:
    """Our leaf -> the Hugging Face tensor (or this row's part of a fused one)."""
    if self.layout == 'copy':
      return np.ascontiguousarray(value.reshape(-1) if value.ndim > 1 and self.hf.endswith(
          '.bias') else value)
    in_size = math.prod(value.shape[:self.n_in])
    flat = value.reshape(in_size, -1)
    return np.ascontiguousarray(flat.T if self.layout == 'linear' else flat)


def _rope_parameters(hf: dict) -> dict:
  """transformers 5 writes `rope_parameters`; older files `rope_theta` + `rope_scaling`."""
  if hf.get('rope_parameters'):
    return dict(hf['rope_parameters'])
  rope = dict(hf.get('rope_scaling') or {})
  rope.setdefault('rope_theta', hf.get('rope_theta', 10000.0))
  if 'type' in rope and 'rope_type' not in rope:
    rope['rope_type'] = rope.pop('type')
  return rope


def _attention_pattern(hf: dict, n_layers: int, window: int | None) -> tuple[int, str]:
  """(sliding_window, layer_types) of a config.json whose `layer_types` names each layer
  'sliding_attention' or 'full_attention' (absent: all full) with `window` the sliding
  layers' window: every layer sliding is a uniform window (layer_types '')."""
  types = list(hf.get('layer_types') or ['full_attention'] * n_layers)
  unknown = set(types) - {'full_attention', 'sliding_attention'}
  if unknown or len(types) != n_layers:
    _refuse('layer_types', sorted(unknown) or len(types),
            f"{n_layers} of 'full_attention' or 'sliding_attention'")
  if 'sliding_attention' not in types:
    return 0, ''
  if not window or window <= 0:
    _refuse('sliding_window', window, 'sliding layers need a positive window')
  if 'full_attention' not in types:
    return int(window), ''
  return int(window), ','.join('local' if t == 'sliding_attention' else 'global'
                               for t in types)


def _layer_types_hf(m) -> list[str]:
  """Our attention pattern as config.json's `layer_types`."""
  if m.layer_types:
    return ['sliding_attention' if k.strip() == 'local' else 'full_attention'
            for k in m.layer_types.split(',')]
  return ['sliding_attention' if m.sliding_window else 'full_attention'] * m.n_layers


def _number(x: float):
  """An int where it is one: transformers' strict configs type some such fields int."""
  return int(x) if float(x).is_integer() else x


def _refuse(field: str, value, why: str):
  raise HFError(f'config.json {field}={value!r} is not supported: {why}')


def _expect(hf: dict, field: str, allowed, why: str, default=None):
  value = hf.get(field, default)
  if value not in allowed:
    _refuse(field, value, why)
  return value


# --- the families -----------------------------------------------------------------------


class Family:
  name: str
  tie_default: bool = False

  def model_config(self, hf: dict) -> ml_collections.ConfigDict:
    raise NotImplementedError

  def hf_config(self, m: ml_collections.ConfigDict) -> dict:
    raise NotImplementedError

  def tensors(self, m: ml_collections.ConfigDict) -> list[Tensor]:
    raise NotImplementedError

  ignored = ()  # checkpoint names that are buffers, not parameters


class GPT2(Family):
  """Learned positions, LayerNorm, tanh-GELU, biases everywhere, fused Conv1D c_attn."""
  name = 'gpt2'
  tie_default = True
  ignored = ('.attn.bias', '.attn.masked_bias')

  def model_config(self, hf):
    _expect(hf, 'activation_function', ('gelu_new', 'gelu_pytorch_tanh'),
            'guide_jax implements the tanh GELU of GPT-2 only', 'gelu_new')
    _expect(hf, 'scale_attn_weights', (True,), 'attention logits must be scaled', True)
    _expect(hf, 'scale_attn_by_inverse_layer_idx', (False,), 'per-layer scaling', False)
    _expect(hf, 'add_cross_attention', (False,), 'cross-attention', False)
    _expect(hf, 'tie_word_embeddings', (True,), 'GPT-2 ties its output layer', True)
    m = config_lib.model_config()
    d, h = hf['n_embd'], hf['n_head']
    m.update(dict(vocab_size=hf['vocab_size'], d_model=d, n_layers=hf['n_layer'], n_heads=h,
                  n_kv_heads=h, head_dim=d // h, mlp_dim=hf.get('n_inner') or 4 * d,
                  max_len=hf['n_positions'], position='learned', norm='layernorm',
                  norm_eps=hf.get('layer_norm_epsilon', 1e-5), mlp='gelu',
                  tie_embeddings=True, use_bias=True, family=self.name))
    return m

  def hf_config(self, m):
    return {'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2',
            'vocab_size': m.vocab_size, 'n_embd': m.d_model, 'n_layer': m.n_layers,
            'n_head': m.n_heads, 'n_inner': m.mlp_dim, 'n_positions': m.max_len,
            'layer_norm_epsilon': m.norm_eps, 'activation_function': 'gelu_new',
            'tie_word_embeddings': True, 'resid_pdrop': 0.0, 'embd_pdrop': 0.0,
            'attn_pdrop': 0.0, 'scale_attn_weights': True}

  def tensors(self, m):
    b = 'transformer.h.{i}.'
    rows = [Tensor('transformer.wte.weight', ('embedding',)),
            Tensor('transformer.wpe.weight', ('pos_embedding',)),
            Tensor('transformer.ln_f.weight', ('final_norm', 'scale')),
            Tensor('transformer.ln_f.bias', ('final_norm', 'bias'))]
    for norm, ours in (('ln_1', 'norm1'), ('ln_2', 'norm2')):
      rows += [Tensor(b + norm + '.weight', ('blocks', ours, 'scale')),
               Tensor(b + norm + '.bias', ('blocks', ours, 'bias'))]
    for k, name in enumerate(('q', 'k', 'v')):
      rows += [Tensor(b + 'attn.c_attn.weight', ('blocks', 'attn', 'w' + name), 'conv1d',
                      part=(k, 3)),
               Tensor(b + 'attn.c_attn.bias', ('blocks', 'attn', 'b' + name), part=(k, 3))]
    rows += [Tensor(b + 'attn.c_proj.weight', ('blocks', 'attn', 'wo'), 'conv1d', n_in=2),
             Tensor(b + 'attn.c_proj.bias', ('blocks', 'attn', 'bo')),
             Tensor(b + 'mlp.c_fc.weight', ('blocks', 'mlp', 'w_in'), 'conv1d'),
             Tensor(b + 'mlp.c_fc.bias', ('blocks', 'mlp', 'b_in')),
             Tensor(b + 'mlp.c_proj.weight', ('blocks', 'mlp', 'w_out'), 'conv1d'),
             Tensor(b + 'mlp.c_proj.bias', ('blocks', 'mlp', 'b_out'))]
    return rows


class Llama(Family):
  """RoPE (split-halves layout, as transformers stores it), RMSNorm, SwiGLU, GQA."""
  name = 'llama'
  architecture = 'LlamaForCausalLM'
  hidden_act = ('silu',)
  ignored = ('.rotary_emb.inv_freq',)
  windowed = False  # whether config.json's layer_types / sliding window are read

  def _common(self, hf) -> ml_collections.ConfigDict:
    act = hf.get('hidden_activation') or hf.get('hidden_act', 'silu')
    if act not in self.hidden_act:
      _refuse('hidden_act', act, f'{self.name} needs {self.hidden_act[0]}')
    rope = _rope_parameters(hf)
    rope_type = rope.get('rope_type', 'default')
    if rope_type not in ('default', 'llama3'):
      _refuse('rope_parameters.rope_type', rope_type, "implemented: 'default', 'llama3'")
    if hf.get('partial_rotary_factor', 1.0) != 1.0:
      _refuse('partial_rotary_factor', hf['partial_rotary_factor'], 'partial rotary')
    if any(k in hf for k in ('num_experts', 'num_local_experts', 'n_routed_experts')):
      _refuse('num_experts', hf.get('num_experts', hf.get('num_local_experts')),
              'mixture-of-experts models')
    if not self.windowed:
      layer_types = set(hf.get('layer_types') or ['full_attention'])
      if layer_types != {'full_attention'}:
        _refuse('layer_types', sorted(layer_types), f'{self.name} attends fully in every '
                f'layer (mistral, qwen2, qwen3, gemma2 and gemma3_text have windows)')
      if hf.get('use_sliding_window'):
        _refuse('use_sliding_window', True, f'{self.name} has no sliding window')
    d, h = hf['hidden_size'], hf['num_attention_heads']
    m = config_lib.model_config()
    m.update(dict(vocab_size=hf['vocab_size'], d_model=d, n_layers=hf['num_hidden_layers'],
                  n_heads=h, n_kv_heads=hf.get('num_key_value_heads') or h,
                  head_dim=hf.get('head_dim') or d // h, mlp_dim=hf['intermediate_size'],
                  max_len=hf.get('max_position_embeddings', 2048), position='rope',
                  rope_base=float(rope.get('rope_theta', 10000.0)), norm='rmsnorm',
                  norm_eps=hf.get('rms_norm_eps', 1e-6), mlp='swiglu',
                  tie_embeddings=bool(hf.get('tie_word_embeddings', self.tie_default)),
                  family=self.name))
    if rope_type == 'llama3':
      m.update(dict(rope_scaling='llama3', rope_scaling_factor=float(rope['factor']),
                    rope_low_freq_factor=float(rope['low_freq_factor']),
                    rope_high_freq_factor=float(rope['high_freq_factor']),
                    rope_original_max_len=int(rope['original_max_position_embeddings'])))
    return m

  def model_config(self, hf):
    m = self._common(hf)
    attention_bias, mlp_bias = hf.get('attention_bias', False), hf.get('mlp_bias', False)
    if attention_bias != mlp_bias:
      _refuse('attention_bias', attention_bias,
              f'guide_jax puts biases on attention and MLP together (mlp_bias={mlp_bias})')
    m.use_bias = bool(attention_bias)
    return m

  def _rope_hf(self, m) -> dict:
    rope = {'rope_type': 'default', 'rope_theta': m.rope_base}
    if m.rope_scaling == 'llama3':
      rope.update({'rope_type': 'llama3', 'factor': m.rope_scaling_factor,
                   'low_freq_factor': m.rope_low_freq_factor,
                   'high_freq_factor': m.rope_high_freq_factor,
                   'original_max_position_embeddings': m.rope_original_max_len})
    return {'rope_parameters': rope, 'rope_theta': m.rope_base,
            'rope_scaling': None if m.rope_scaling == 'none' else dict(rope)}

  def hf_config(self, m):
    return {'architectures': [self.architecture], 'model_type': self.name,
            'vocab_size': m.vocab_size, 'hidden_size': m.d_model,
            'num_hidden_layers': m.n_layers, 'num_attention_heads': m.n_heads,
            'num_key_value_heads': m.n_kv_heads, 'head_dim': m.head_dim,
            'intermediate_size': m.mlp_dim, 'max_position_embeddings': m.max_len,
            'rms_norm_eps': m.norm_eps, 'hidden_act': self.hidden_act[0],
            'tie_word_embeddings': bool(m.tie_embeddings), 'attention_dropout': 0.0,
            **self._rope_hf(m), **self._extra_hf(m)}

  def _extra_hf(self, m) -> dict:
    return {'attention_bias': bool(m.use_bias), 'mlp_bias': bool(m.use_bias)}

  def block_norms(self, m) -> list[tuple[str, str]]:
    """(checkpoint name in a layer, our norm) of each norm gain of a block."""
    return [('input_layernorm', 'norm1'), ('post_attention_layernorm', 'norm2')]

  def tensors(self, m):
    b = 'model.layers.{i}.'
    rows = [Tensor('model.embed_tokens.weight', ('embedding',)),
            Tensor('model.norm.weight', ('final_norm', 'scale'))]
    rows += [Tensor(b + hf_name + '.weight', ('blocks', ours, 'scale'))
             for hf_name, ours in self.block_norms(m)]
    if not m.tie_embeddings:
      rows.append(Tensor('lm_head.weight', ('unembed',), 'linear'))
    for name in ('q', 'k', 'v'):
      rows.append(Tensor(b + f'self_attn.{name}_proj.weight', ('blocks', 'attn', 'w' + name),
                         'linear'))
      if m.use_bias or m.qkv_bias:
        rows.append(Tensor(b + f'self_attn.{name}_proj.bias', ('blocks', 'attn', 'b' + name)))
    rows.append(Tensor(b + 'self_attn.o_proj.weight', ('blocks', 'attn', 'wo'), 'linear', 2))
    if m.qk_norm:
      rows += [Tensor(b + f'self_attn.{n}_norm.weight', ('blocks', 'attn', f'{n}_norm', 'scale'))
               for n in ('q', 'k')]
    for hf_name, ours in (('gate_proj', 'w_gate'), ('up_proj', 'w_up'), ('down_proj', 'w_out')):
      rows.append(Tensor(b + f'mlp.{hf_name}.weight', ('blocks', 'mlp', ours), 'linear'))
    if m.use_bias:
      rows.append(Tensor(b + 'self_attn.o_proj.bias', ('blocks', 'attn', 'bo')))
      rows += [Tensor(b + f'mlp.{hf_name}.bias', ('blocks', 'mlp', 'b' + ours[1:]))
               for hf_name, ours in (('gate_proj', 'w_gate'), ('up_proj', 'w_up'),
                                     ('down_proj', 'w_out'))]
    return rows


class Mistral(Llama):
  """Llama's layout with a sliding attention window in every layer."""
  name = 'mistral'
  architecture = 'MistralForCausalLM'
  windowed = True

  def model_config(self, hf):
    if hf.get('layer_types'):
      _refuse('layer_types', hf['layer_types'], 'MistralForCausalLM windows every layer; '
              'alternating layers are Ministral, not supported')
    m = self._common(hf)
    m.sliding_window = int(hf.get('sliding_window') or 0)
    return m

  def _extra_hf(self, m):
    return {'sliding_window': m.sliding_window or None}


class Qwen2(Llama):
  """Llama's layout with biases on q, k and v (none on o or the MLP); with
  use_sliding_window, the layers its layer_types names sliding attend within the window
  (from max_window_layers on, by default)."""
  name = 'qwen2'
  architecture = 'Qwen2ForCausalLM'
  windowed = True

  def _window(self, hf, m):
    window = hf.get('sliding_window') if hf.get('use_sliding_window') else None
    m.sliding_window, m.layer_types = _attention_pattern(hf, m.n_layers, window)

  def model_config(self, hf):
    m = self._common(hf)
    m.qkv_bias = True
    self._window(hf, m)
    return m

  def _window_hf(self, m) -> dict:
    types = _layer_types_hf(m)
    return {'use_sliding_window': bool(m.sliding_window),
            'sliding_window': m.sliding_window or None, 'layer_types': types,
            'max_window_layers': types.index('sliding_attention') if m.sliding_window
                                 else m.n_layers}

  def _extra_hf(self, m):
    return self._window_hf(m)


class Qwen3(Qwen2):
  """Llama's layout with per-head RMSNorm on q and k (before RoPE), no biases; windows as
  Qwen2's."""
  name = 'qwen3'
  architecture = 'Qwen3ForCausalLM'

  def model_config(self, hf):
    _expect(hf, 'attention_bias', (False,), 'Qwen3 with attention biases', False)
    m = self._common(hf)
    m.qk_norm = True
    self._window(hf, m)
    return m

  def _extra_hf(self, m):
    return {'attention_bias': False, **self._window_hf(m)}


class Gemma(Llama):
  """RMSNorm with gain 1 + w, embeddings scaled by sqrt(d), GELU-tanh gated MLP, tied."""
  name = 'gemma'
  architecture = 'GemmaForCausalLM'
  hidden_act = ('gelu_pytorch_tanh', 'gelu_new')
  tie_default = True

  def model_config(self, hf):
    _expect(hf, 'attention_bias', (False,), 'Gemma with attention biases', False)
    _expect(hf, 'tie_word_embeddings', (True,), 'Gemma ties its output layer', True)
    if hf.get('use_bidirectional_attention'):
      _refuse('use_bidirectional_attention', True, 'a decoder needs causal attention')
    m = self._common(hf)
    m.update(dict(norm_scale_offset=1.0, scale_embeddings=True, mlp='geglu'))
    return m

  def _extra_hf(self, m):
    return {'hidden_activation': 'gelu_pytorch_tanh', 'attention_bias': False}


class Gemma2(Gemma):
  """Gemma with sandwich norms (input, post-attention, pre- and post-feedforward),
  attention logits scaled by query_pre_attn_scalar and soft-capped, local (sliding) and
  global layers by layer_types (alternating), and the final logits soft-capped."""
  name = 'gemma2'
  architecture = 'Gemma2ForCausalLM'
  windowed = True

  def _rope(self, hf, m) -> None:
    rope = _rope_parameters(hf)
    if rope.get('rope_type', 'default') != 'default':
      _refuse('rope_parameters.rope_type', rope.get('rope_type'), "implemented: 'default'")

  def model_config(self, hf):
    _expect(hf, 'attention_bias', (False,), f'{self.name} with attention biases', False)
    _expect(hf, 'tie_word_embeddings', (True,), f'{self.name} ties its output layer', True)
    if hf.get('use_bidirectional_attention'):
      _refuse('use_bidirectional_attention', True, 'a decoder needs causal attention')
    m = self._common(self._common_view(hf))
    self._rope(hf, m)
    m.update(dict(norm_scale_offset=1.0, scale_embeddings=True, mlp='geglu', post_norms=True,
                  query_pre_attn_scalar=float(hf.get('query_pre_attn_scalar') or m.head_dim),
                  attn_logit_softcap=float(hf.get('attn_logit_softcapping') or 0.0),
                  final_logit_softcap=float(hf.get('final_logit_softcapping') or 0.0)))
    m.sliding_window, m.layer_types = _attention_pattern(hf, m.n_layers,
                                                         hf.get('sliding_window'))
    return m

  def _common_view(self, hf) -> dict:
    """What Llama's _common reads, with the rope of the global layers."""
    return hf

  def block_norms(self, m):
    return [('input_layernorm', 'norm1'), ('post_attention_layernorm', 'post_attn_norm'),
            ('pre_feedforward_layernorm', 'norm2'),
            ('post_feedforward_layernorm', 'post_mlp_norm')]

  def _extra_hf(self, m):
    return {'hidden_activation': 'gelu_pytorch_tanh', 'attention_bias': False,
            'query_pre_attn_scalar': _number(m.query_pre_attn_scalar or m.head_dim),
            'attn_logit_softcapping': m.attn_logit_softcap or None,
            'final_logit_softcapping': m.final_logit_softcap or None,
            'sliding_window': m.sliding_window or None, 'layer_types': _layer_types_hf(m)}


class Gemma3Text(Gemma2):
  """Gemma 2's layout with RMSNorm (1 + w) on each head's q and k, no soft-caps by default,
  5 local : 1 global layers, and a RoPE per kind of layer: rope_parameters
  {'sliding_attention': base 10k, 'full_attention': base 1M (and `linear` scaling on the
  larger models)}."""
  name = 'gemma3_text'
  architecture = 'Gemma3ForCausalLM'

  def _kinds_rope(self, hf) -> tuple[dict, dict]:
    """(global, local) rope parameters, from either config.json format."""
    rope = hf.get('rope_parameters') or {}
    if 'full_attention' in rope or 'sliding_attention' in rope:
      return (dict(rope.get('full_attention') or {}), dict(rope.get('sliding_attention') or {}))
    full = dict(hf.get('rope_scaling') or {})  # transformers 4's rope_theta + local base
    if 'type' in full and 'rope_type' not in full:
      full['rope_type'] = full.pop('type')
    full.setdefault('rope_theta', hf.get('rope_theta', 1_000_000.0))
    return full, {'rope_type': 'default',
                  'rope_theta': hf.get('rope_local_base_freq', 10_000.0)}

  def _common_view(self, hf):
    full, _ = self._kinds_rope(hf)
    return {**hf, 'rope_parameters': {'rope_type': 'default',
                                      'rope_theta': full.get('rope_theta', 1_000_000.0)}}

  def _rope(self, hf, m) -> None:
    full, local = self._kinds_rope(hf)
    if full.get('rope_type', 'default') not in ('default', 'linear'):
      _refuse('rope_parameters.full_attention.rope_type', full.get('rope_type'),
              "implemented: 'default', 'linear'")
    if local.get('rope_type', 'default') != 'default':
      _refuse('rope_parameters.sliding_attention.rope_type', local.get('rope_type'),
              "implemented: 'default'")
    if full.get('rope_type') == 'linear':
      m.rope_scaling, m.rope_scaling_factor = 'linear', float(full['factor'])
    m.local_rope_base = float(local.get('rope_theta', 10_000.0))

  def model_config(self, hf):
    m = super().model_config(hf)
    m.qk_norm = True
    return m

  def _rope_hf(self, m):
    full = {'rope_type': 'default', 'rope_theta': m.rope_base}
    if m.rope_scaling == 'linear':
      full.update({'rope_type': 'linear', 'factor': m.rope_scaling_factor})
    return {'rope_parameters': {'full_attention': full, 'sliding_attention': {
        'rope_type': 'default', 'rope_theta': m.local_rope_base or m.rope_base}}}


FAMILIES = {f.name: f for f in (GPT2(), Llama(), Mistral(), Qwen2(), Qwen3(), Gemma(),
                                Gemma2(), Gemma3Text())}

# Named so that their refusal can say what is missing rather than "unknown".
_NOT_SUPPORTED = {
    'gemma3': 'the multimodal Gemma 3 (a vision tower and model.language_model.*); its text '
              'model is gemma3_text (Gemma3ForCausalLM): the 1B checkpoint, or a text-only '
              'conversion',
    'mixtral': 'mixture-of-experts MLPs (num_local_experts)',
    'qwen2_moe': 'mixture-of-experts MLPs (num_experts)',
    'qwen3_moe': 'mixture-of-experts MLPs (num_experts)',
}


def family_of(hf: dict) -> Family:
  """The family of a Hugging Face config.json; HFError for anything else."""
  model_type = hf.get('model_type')
  if model_type in _NOT_SUPPORTED:
    _refuse('model_type', model_type, _NOT_SUPPORTED[model_type])
  if model_type not in FAMILIES:
    _refuse('model_type', model_type, f'supported: {", ".join(FAMILIES)}')
  return FAMILIES[model_type]


def model_config(hf: dict) -> ml_collections.ConfigDict:
  """The guide_jax model config of a Hugging Face config.json (validated)."""
  m = family_of(hf).model_config(hf)
  config_lib.validate_model(m, 'teacher model')
  return m


# Fields that define the function a model computes; a family must reproduce every one.
ARCHITECTURE_FIELDS = (
    'vocab_size', 'd_model', 'n_layers', 'n_heads', 'n_kv_heads', 'head_dim', 'mlp_dim',
    'max_len', 'position', 'norm', 'norm_eps', 'mlp', 'tie_embeddings', 'scale_embeddings',
    'use_bias', 'qkv_bias', 'qk_norm', 'norm_scale_offset', 'sliding_window', 'layer_types',
    'local_rope_base', 'query_pre_attn_scalar', 'attn_logit_softcap', 'final_logit_softcap',
    'post_norms')
_ROPE_FIELDS = ('rope_base', 'rope_scaling', 'rope_scaling_factor', 'rope_low_freq_factor',
                'rope_high_freq_factor', 'rope_original_max_len')


def _guess(m) -> str:
  if m.position == 'learned':
    return 'gpt2'
  if m.post_norms:
    return 'gemma3_text' if m.qk_norm else 'gemma2'
  if m.mlp == 'geglu' or m.scale_embeddings or m.norm_scale_offset:
    return 'gemma'
  if m.qk_norm:
    return 'qwen3'
  if m.qkv_bias and not m.use_bias:
    return 'qwen2'
  return 'mistral' if m.sliding_window else 'llama'


def export_family(m: ml_collections.ConfigDict) -> Family:
  """The family a model exports as: model.family, else the one its architecture matches.

  The check is a round trip: the family's config.json read back must give the same model
  on every architecture field; the first field that differs has no equivalent there.
  """
  family = FAMILIES[m.family or _guess(m)]
  back = family.model_config(family.hf_config(m))
  fields = ARCHITECTURE_FIELDS + (_ROPE_FIELDS if m.position == 'rope' else ())
  for name in fields:
    if back[name] != m[name]:
      raise HFError(f'model.{name}={m[name]!r} has no equivalent in the Hugging Face family '
                    f'{family.name!r} (it would load as {back[name]!r}); export needs a '
                    f'model that family can express')
  return family
