import jax
import jax.numpy as jnp
import numpy as np
import pytest

from guide_jax import config as config_lib
from guide_jax.models import transformer


def small_model(**overrides):
  m = config_lib.model_config()
  m.update(dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                mlp_dim=48, max_len=16))
  m.update(overrides)
  return m


def batch_for(tokens, segment_ids=None):
  b, t = tokens.shape
  seg = np.ones((b, t), np.int32) if segment_ids is None else segment_ids
  pos = np.zeros_like(seg)
  for i in range(b):
    for j in range(1, t):
      pos[i, j] = pos[i, j - 1] + 1 if seg[i, j] == seg[i, j - 1] else 0
  return {'inputs': jnp.asarray(tokens), 'positions': jnp.asarray(pos),
          'segment_ids': jnp.asarray(seg)}


VARIANTS = [
    dict(),
    dict(position='rope', norm='layernorm', mlp='gelu', use_bias=True),
    dict(tie_embeddings=False, scale_embeddings=True, n_kv_heads=4),
    dict(scan_layers=False, remat='full'),
]


@pytest.mark.parametrize('overrides', VARIANTS)
def test_shapes_follow_guide_notation(overrides):
  m = small_model(**overrides)
  params = transformer.init_params(m, jax.random.key(0))
  n, d, h, hkv, l, f = m.n_layers, m.d_model, m.n_heads, m.n_kv_heads, m.head_dim, m.mlp_dim
  attn = params['blocks']['attn']
  assert attn['wq'].shape == (n, d, h, l)
  assert attn['wk'].shape == attn['wv'].shape == (n, d, hkv, l)
  assert attn['wo'].shape == (n, h, l, d)
  assert params['embedding'].shape == (m.vocab_size, d)
  assert ('pos_embedding' in params) == (m.position == 'learned')
  assert ('unembed' in params) == (not m.tie_embeddings)
  mlp_names = {'w_gate', 'w_up', 'w_out'} if m.mlp == 'swiglu' else {'w_in', 'w_out'}
  assert mlp_names <= set(params['blocks']['mlp'])
  mlp = params['blocks']['mlp']
  assert mlp['w_out'].shape == (n, f, d)
  assert all(mlp[k].shape == (n, d, f) for k in mlp_names - {'w_out'})
  axes = transformer.logical_axes(m)
  assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, tuple)) == \
      jax.tree.structure(params)
  assert axes['blocks']['attn']['wq'] == ('layers', 'embed', 'heads', 'kv')
  tokens = np.random.default_rng(0).integers(0, m.vocab_size, (2, 12))
  logits = transformer.apply(m, params, batch_for(tokens))
  assert logits.shape == (2, 12, m.vocab_size) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()


@pytest.mark.parametrize('overrides', VARIANTS[:2])
def test_causal(overrides):
  m = small_model(**overrides)
  params = transformer.init_params(m, jax.random.key(1))
  tokens = np.random.default_rng(1).integers(0, m.vocab_size, (1, 12))
  changed = tokens.copy()
  changed[0, 7:] = (changed[0, 7:] + 5) % m.vocab_size
  a = transformer.apply(m, params, batch_for(tokens))
  b = transformer.apply(m, params, batch_for(changed))
  np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-5, rtol=1e-5)
  assert np.abs(np.asarray(a[:, 7:] - b[:, 7:])).max() > 1e-3


@pytest.mark.parametrize('overrides', VARIANTS[:2])
def test_packed_segments_are_independent(overrides):
  """A packed row gives each segment the logits it would get alone."""
  m = small_model(**overrides)
  params = transformer.init_params(m, jax.random.key(2))
  rng = np.random.default_rng(2)
  first, second = rng.integers(0, m.vocab_size, (1, 5)), rng.integers(0, m.vocab_size, (1, 7))
  packed = np.concatenate([first, second], axis=1)
  seg = np.array([[1] * 5 + [2] * 7], np.int32)
  p = transformer.apply(m, params, batch_for(packed, seg))
  a = transformer.apply(m, params, batch_for(first))
  b = transformer.apply(m, params, batch_for(second))
  np.testing.assert_allclose(p[:, :5], a, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(p[:, 5:], b, atol=1e-5, rtol=1e-5)


def test_scan_equals_loop():
  m = small_model()
  params = transformer.init_params(m, jax.random.key(3))
  batch = batch_for(np.random.default_rng(3).integers(0, m.vocab_size, (2, 10)))
  scanned = transformer.apply(m, params, batch)
  looped = transformer.apply(small_model(scan_layers=False), params, batch)
  np.testing.assert_allclose(scanned, looped, atol=1e-5, rtol=1e-5)


def test_bfloat16_compute_with_float32_params():
  m = small_model(dtype='bfloat16')
  params = transformer.init_params(m, jax.random.key(4))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  batch = batch_for(np.random.default_rng(4).integers(0, m.vocab_size, (2, 10)))
  low = transformer.apply(m, params, batch)
  full = transformer.apply(small_model(), params, batch)
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(low, full, atol=5e-2)  # bf16 rounding, not a wrong result
  grads = jax.grad(lambda p: transformer.apply(m, p, batch).mean())(params)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
