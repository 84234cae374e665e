"""KV-cache sampling for every model the trainer trains or imports.

Prompts of different lengths are left-padded to one length P, so every row's next token
sits in the same cache slot: row b's pad slots [0, pad_b) are masked out of attention and
its positions count from its first real token (what learned positions and RoPE read).
  prefill   one jitted call over the padded prompts: writes slots [0, P), returns the
            logits of each row's last prompt token
  decode    one jitted call per new token: attends to the cache's slots < P + k and to
            itself, then writes its keys/values at slot P + k; the cache is donated, so it
            is updated in place (attention reads it as it is, never a copy with the new
            token concatenated)
Both run under the parameters' mesh: the cache is sharded over the batch (data axes) and
the kv heads (tensor axis) where they divide. A row stops at EOS (then emits EOS); the
loop stops when every row has, or after max_new_tokens. `sample` is the same prefill and
decode traced inside a caller's jit (a lax.scan over all max_new_tokens): on-policy
distillation's sampling step (train/on_policy.py).

Sampling: temperature 0 is greedy (argmax); otherwise logits / temperature, restricted to
the top_k tokens (0: all) and to the smallest set whose probability reaches top_p (1.0:
all), then a draw with the key fold_in(seed, k) for new token k: reproducible per seed.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from guide_jax import config as config_lib
from guide_jax import sharding
from guide_jax.models import transformer


@dataclasses.dataclass(frozen=True)
class Sampling:
  max_new_tokens: int = 64
  temperature: float = 0.0   # 0: greedy
  top_k: int = 0             # 0: no top-k restriction
  top_p: float = 1.0         # 1.0: no nucleus restriction
  seed: int = 0

  def check(self) -> None:
    _require(self.max_new_tokens > 0, f'max_new_tokens={self.max_new_tokens} must be positive')
    _require(self.temperature >= 0, f'temperature={self.temperature} must be >= 0 (0: greedy)')
    _require(self.top_k >= 0, f'top_k={self.top_k} must be >= 0 (0: off)')
    _require(0 < self.top_p <= 1, f'top_p={self.top_p} must be in (0, 1] (1: off)')


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise config_lib.ConfigError(message)


def choose(logits: jax.Array, key: jax.Array, temperature: float, top_k: int,
           top_p: float) -> jax.Array:
  """Next tokens [b] from float32 logits [b, V] (static sampling settings)."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability of the tokens ranked higher
    cut = jnp.where(before < top_p, sorted_logits, -jnp.inf)
    logits = jnp.full_like(logits, -jnp.inf).at[
        jnp.arange(logits.shape[0])[:, None], order].set(cut)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def masks(slots: jax.Array, pad: jax.Array, size: int,
          window: int = 0) -> tuple[jax.Array, jax.Array]:
  """For new tokens at cache slots `slots` [t] of rows whose first pad_b slots are padding:
  (over the cache [b, 1, 1, t, S]: the slots written before, not pads; over the new tokens
  [b, 1, 1, t, t]: causal, not pads), both within `window` keys when it is > 0 (a slot's
  position is the slot minus the row's padding, so the distance is that of the slots)."""
  s = jnp.arange(size)
  written = (s[None, None, :] < slots[0]) & (s[None, None, :] >= pad[:, None, None])
  written = jnp.broadcast_to(written, (pad.shape[0], slots.shape[0], size))
  causal = (slots[None, :, None] >= slots[None, None, :]) & (
      slots[None, None, :] >= pad[:, None, None])
  if window:
    written = written & (slots[None, :, None] - s[None, None, :] < window)
    causal = causal & (slots[None, :, None] - slots[None, None, :] < window)
  return written[:, None, None], causal[:, None, None]


def layer_masks(cfg: ml_collections.ConfigDict, slots: jax.Array, pad: jax.Array,
                size: int) -> tuple:
  """(masks of a global layer, masks of a local one) for Transformer.cached: with
  layer_types, only local layers are windowed; without, every layer has sliding_window."""
  local = masks(slots, pad, size, cfg.sliding_window)
  return (masks(slots, pad, size) if cfg.layer_types else local), local


CACHE_AXES = (None, 'act_batch', None, 'act_heads', None)  # [layers, b, slots, kv, head]


def step_functions(cfg: ml_collections.ConfigDict, eos_id: int, prompt_len: int, size: int,
                   sampling: Sampling):
  """(prefill, decode), unjitted: what Sampler.generate jits one by one, and `sample`
  runs inside a caller's jit.
    prefill(params, tokens [b, P], pad [b], key) -> (first new token [b], cache)
    decode(params, cache, token [b], slot, pad, done [b], key) -> (token, cache, done)"""
  pick = functools.partial(choose, temperature=sampling.temperature, top_k=sampling.top_k,
                           top_p=sampling.top_p)
  dtype = jnp.dtype(cfg.dtype)
  cache_shape = lambda b: (cfg.n_layers, b, size, cfg.n_kv_heads, cfg.head_dim)

  def prefill(params, tokens, pad, key):
    cache = {n: sharding.constrain(jnp.zeros(cache_shape(tokens.shape[0]), dtype), CACHE_AXES)
             for n in ('k', 'v')}
    slots = jnp.arange(prompt_len)
    positions = jnp.maximum(slots[None, :] - pad[:, None], 0)
    model = transformer.bind(cfg, params)
    logits, cache = model.cached(tokens, positions, cache, 0,
                                 layer_masks(cfg, slots, pad, size))
    return pick(logits[:, -1], key), cache

  def decode(params, cache, token, slot, pad, done, key):
    positions = (slot - pad)[:, None]
    model = transformer.bind(cfg, params)
    logits, cache = model.cached(token[:, None], positions, cache, slot,
                                 layer_masks(cfg, slot[None], pad, size))
    new = pick(logits[:, -1], key)
    new = jnp.where(done, eos_id, new)
    return new, cache, done | (new == eos_id)

  return prefill, decode


def sample(cfg: ml_collections.ConfigDict, params: dict, tokens: jax.Array, pad: jax.Array,
           key: jax.Array, eos_id: int, sampling: Sampling) -> jax.Array:
  """All `sampling.max_new_tokens` new tokens [b, N] of left-padded prompts `tokens` [b, P]
  (row b's first pad[b] slots are padding), traced inside the caller's jit: prefill, then
  a lax.scan of decode steps (no early stop: a row emits EOS after its first). The draws
  are Sampler.generate's (new token k from fold_in(key, k)), so a prompt gets the tokens
  generate gives it with jax.random.key(seed) as `key`."""
  prompt_len, n = tokens.shape[1], sampling.max_new_tokens
  prefill, decode = step_functions(cfg, eos_id, prompt_len, prompt_len + n, sampling)
  token, cache = prefill(params, tokens, pad, jax.random.fold_in(key, 0))

  def body(carry, k):
    token, cache, done = carry
    token, cache, done = decode(params, cache, token, prompt_len + k - 1, pad, done,
                                jax.random.fold_in(key, k))
    return (token, cache, done), token

  _, rest = jax.lax.scan(body, (token, cache, token == eos_id), jnp.arange(1, n))
  return jnp.concatenate([token[:, None], rest.T], axis=1)


class Sampler:
  """Generates from `params` (placed on `mesh`) of the model `model_cfg`."""

  def __init__(self, model_cfg: ml_collections.ConfigDict, params: dict, eos_id: int,
               mesh: jax.sharding.Mesh, rules: Sequence = sharding.DEFAULT_RULES):
    self.cfg, self.params, self.eos_id = model_cfg, params, eos_id
    self.mesh, self.rules = mesh, tuple(rules)
    self._compiled: dict = {}

  def _sharding(self, axes, shape) -> NamedSharding:
    return NamedSharding(self.mesh, sharding.spec_for(axes, self.rules, shape, self.mesh))

  def _functions(self, batch: int, prompt_len: int, size: int, sampling: Sampling):
    key = (batch, prompt_len, size, sampling.temperature, sampling.top_k, sampling.top_p)
    if key in self._compiled:
      return self._compiled[key]
    cfg = self.cfg
    cache_shape = (cfg.n_layers, batch, size, cfg.n_kv_heads, cfg.head_dim)
    cache_sharding = self._sharding(CACHE_AXES, cache_shape)
    rows = self._sharding(('act_batch',), (batch,))
    prefill, decode = step_functions(cfg, self.eos_id, prompt_len, size, sampling)
    cache_shardings = {'k': cache_sharding, 'v': cache_sharding}
    functions = (
        jax.jit(prefill, out_shardings=(rows, cache_shardings)),
        jax.jit(decode, donate_argnums=(1,), out_shardings=(rows, cache_shardings, rows)))
    self._compiled[key] = functions
    return functions

  def generate(self, prompts: Sequence[Sequence[int]], sampling: Sampling,
               on_step: Callable[[np.ndarray, np.ndarray], None] | None = None
               ) -> list[list[int]]:
    """New tokens of each prompt (up to and including its EOS). `on_step(tokens, done)` is
    called with every new token [b] (host arrays) as it is produced: for streaming."""
    sampling.check()
    _require(len(prompts) > 0 and all(len(p) > 0 for p in prompts),
             'every prompt needs at least one token')
    longest = max(len(p) for p in prompts)
    total = longest + sampling.max_new_tokens
    if self.cfg.position == 'learned':
      _require(total <= self.cfg.max_len,
               f'the longest prompt ({longest} tokens) + max_new_tokens='
               f'{sampling.max_new_tokens} exceeds the model\'s max_len={self.cfg.max_len} '
               f'(learned positions); shorten the prompt or lower max_new_tokens')
    batch = len(prompts)
    prompt_len = -(-longest // 16) * 16  # fewer recompilations across prompt lengths
    size = prompt_len + sampling.max_new_tokens
    pad = np.array([prompt_len - len(p) for p in prompts], np.int32)
    tokens = np.zeros((batch, prompt_len), np.int32)
    for b, p in enumerate(prompts):
      tokens[b, pad[b]:] = p
    prefill, decode = self._functions(batch, prompt_len, size, sampling)
    root = jax.random.key(sampling.seed)
    with jax.set_mesh(self.mesh), sharding.use_rules(self.rules):
      token, cache = prefill(self.params, tokens, pad, jax.random.fold_in(root, 0))
      done = token == self.eos_id
      out = [np.asarray(token)]
      if on_step:
        on_step(out[-1], np.asarray(done))
      for k in range(1, sampling.max_new_tokens):
        if bool(np.all(np.asarray(done))):
          break
        token, cache, done = decode(self.params, cache, token, jnp.int32(prompt_len + k - 1),
                                    pad, done, jax.random.fold_in(root, k))
        out.append(np.asarray(token))
        if on_step:
          on_step(out[-1], np.asarray(done))
    steps = np.stack(out, axis=1)
    result = []
    for row in steps:
      ends = np.flatnonzero(row == self.eos_id)
      result.append(row[:ends[0] + 1].tolist() if len(ends) else row.tolist())
    return result


@dataclasses.dataclass
class LoadedModel:
  """A run's (or an HF directory's) model on this host's devices, ready to sample."""
  model: ml_collections.ConfigDict
  params: dict
  vocab: object            # guide_jax.data.tokenizer.Vocabulary or HFVocabulary
  sampler: Sampler

  def decode(self, ids: Sequence[int]) -> str:
    return self.vocab.decode([i for i in ids if i != self.vocab.eos_id])


def load(path: str, dtype: str = 'float32') -> LoadedModel:
  """The latest checkpoint of a training run, or a Hugging Face directory, with its
  tokenizer, on a mesh of all devices (ConfigError naming what is missing)."""
  from guide_jax import saved_model
  from guide_jax.data import tokenizer as tokenizer_lib
  _require(dtype in ('float32', 'bfloat16'), f"--dtype={dtype!r} must be 'float32' or "
           f"'bfloat16'")
  mesh = sharding.make_mesh(config_lib.base_config().mesh)
  rules = sharding.DEFAULT_RULES
  with jax.set_mesh(mesh), sharding.use_rules(rules):
    loaded = saved_model.load(path, mesh, rules, dtype)
  _require(bool(loaded.vocab_path), f'--workdir={path} has no tokenizer (a run on synthetic '
           f'data, or an HF directory without tokenizer.json); prompts need one')
  vocab = tokenizer_lib.load(loaded.vocab_path)
  return LoadedModel(loaded.model, loaded.params, vocab,
                     Sampler(loaded.model, loaded.params, vocab.eos_id, mesh, rules))
