import contextlib
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from guide_jax import config as config_lib
from guide_jax.models import attention, transformer


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
  m = small_model(unroll_on_cpu=False)
  params = transformer.init_params(m, jax.random.key(3))
  batch = batch_for(np.random.default_rng(3).integers(0, m.vocab_size, (2, 10)))
  scanned = transformer.apply(m, params, batch)
  looped = transformer.apply(small_model(scan_layers=False), params, batch)
  np.testing.assert_allclose(scanned, looped, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('scan_layers,unroll_on_cpu,scans', [
    (True, False, True), (True, True, False), (False, False, False)])
def test_layers_are_unrolled_on_a_cpu_mesh_only_when_asked(scan_layers, unroll_on_cpu, scans):
  m = small_model(scan_layers=scan_layers, unroll_on_cpu=unroll_on_cpu)
  params = transformer.init_params(m, jax.random.key(3))
  batch = batch_for(np.random.default_rng(3).integers(0, m.vocab_size, (2, 10)))
  with jax.set_mesh(jax.make_mesh((1,), ('data',), devices=jax.devices()[:1])):
    assert transformer.scans_layers(m) == scans
    jaxpr = str(jax.make_jaxpr(lambda p: transformer.apply(m, p, batch))(params))
  assert (' scan[' in jaxpr) == scans


def test_causal_query_chunks_equal_one_chunk():
  """Uneven chunks (14 queries in 3), packed segments, grouped queries: the logits and
  gradients of chunked attention equal the unchunked ones."""
  seg = np.array([[1] * 6 + [2] * 8, [1] * 14])
  batch = batch_for(np.random.default_rng(5).integers(0, 97, (2, 14)), seg)
  one, three = small_model(query_chunks=1), small_model(query_chunks=3)
  params = transformer.init_params(one, jax.random.key(5))
  logits = lambda m: jax.jit(lambda p: transformer.apply(m, p, batch))(params)
  np.testing.assert_allclose(logits(three), logits(one), atol=1e-5, rtol=1e-5)
  want = jax.jit(jax.grad(_mean_logit_loss(one, batch)))(params)
  got = jax.jit(jax.grad(_mean_logit_loss(three, batch)))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), got, want)


def test_query_chunks_are_chosen_by_platform(monkeypatch):
  auto, fixed = small_model(), small_model(query_chunks=3)
  assert [attention.query_chunks(auto, t) for t in (16, 127, 128, 256, 4096)] == [1, 1, 2, 4, 4]
  assert attention.query_chunks(fixed, 256) == 3 and attention.query_chunks(fixed, 2) == 2
  monkeypatch.setattr(attention.sharding, 'platform', lambda: 'tpu')
  assert attention.query_chunks(auto, 4096) == 1 and attention.query_chunks(fixed, 256) == 3


def _mean_logit_loss(m, batch):
  return lambda params: transformer.apply(m, params, batch).mean()


@pytest.mark.parametrize('remat', [  # the dots policies: slow (full and MaxText's by default)
    pytest.param(r, marks=pytest.mark.slow) if r.startswith('dots') else r
    for r in sorted(set(transformer.REMAT_POLICIES) - {'none'})])
def test_remat_policies_keep_the_gradients(remat):
  m = small_model()
  params = transformer.init_params(m, jax.random.key(4))
  batch = batch_for(np.random.default_rng(4).integers(0, m.vocab_size, (2, 10)))
  want = jax.jit(jax.grad(_mean_logit_loss(m, batch)))(params)
  got = jax.jit(jax.grad(_mean_logit_loss(small_model(remat=remat), batch)))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), got, want)


def _saved_shapes(remat):
  """Shapes of the forward residuals the backward pass keeps, unrolled layers (JAX only
  prints them: `f32[2,10,48] output of ...`, one a line)."""
  m = small_model(remat=remat, scan_layers=False)
  params = transformer.init_params(m, jax.random.key(5))
  batch = batch_for(np.random.default_rng(5).integers(0, m.vocab_size, (2, 10)))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    print_saved_residuals(_mean_logit_loss(m, batch), params)
  return [tuple(int(n) for n in dims.split(',') if n)
          for dims in re.findall(r'^\w+\[([\d,]*)\]', out.getvalue(), re.M)]


def test_save_dot_except_mlp_keeps_attention_projections_not_the_mlp():
  m = small_model()
  b, t, f = 2, 10, m.mlp_dim
  dots = _saved_shapes('dots')
  lean = _saved_shapes('save_dot_except_mlp')
  mlp_hidden = (b, t, f)
  assert mlp_hidden in dots and mlp_hidden not in lean
  # per layer: q [b, t, h, l], k and v [b, t, hkv, l], the output projection [b, t, d]
  for shape, count in [((b, t, m.n_heads, m.head_dim), 1), ((b, t, m.n_kv_heads, m.head_dim), 2),
                       ((b, t, m.d_model), 1)]:
    assert lean.count(shape) >= count * m.n_layers, shape


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


def gemma3_like(**overrides):
  """Gemma 3's features on a tiny model: local (window 5) and global layers with their own
  RoPE, sandwich norms, q/k norms, query_pre_attn_scalar, and both soft-caps."""
  m = config_lib.model_config()
  m.update(dict(vocab_size=97, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8,
                mlp_dim=48, max_len=64, position='rope', rope_base=1e6, local_rope_base=1e4,
                rope_scaling='linear', rope_scaling_factor=4.0, sliding_window=5,
                layer_types='local,global,local', post_norms=True,
                qk_norm=True, norm_scale_offset=1.0, scale_embeddings=True, mlp='geglu',
                query_pre_attn_scalar=12.0, attn_logit_softcap=3.0, final_logit_softcap=5.0))
  m.update(overrides)
  config_lib.validate_model(m)
  return m


def test_layer_pattern_is_scan_data_scanned_equals_unrolled():
  """The layer kinds ride through lax.scan as data (a lax.cond per layer between the local
  and the global kernel); unrolled, each layer's kind is a Python int. Forward and
  gradients agree, with packed segments."""
  scanned = gemma3_like(scan_layers=True, unroll_on_cpu=False)
  unrolled = gemma3_like(scan_layers=True, unroll_on_cpu=True)
  params = jax.tree.map(lambda x: 3.0 * x, transformer.init_params(scanned, jax.random.key(0)))
  tokens = jax.random.randint(jax.random.key(1), (2, 24), 0, 97)
  segments = jnp.concatenate([jnp.ones((2, 15), jnp.int32), 2 * jnp.ones((2, 9), jnp.int32)], 1)
  positions = jnp.concatenate([jnp.arange(15), jnp.arange(9)])[None].repeat(2, 0)
  batch = {'inputs': tokens, 'positions': positions, 'segment_ids': segments}

  def loss(cfg):
    return jax.jit(jax.value_and_grad(
        lambda p: jnp.mean(transformer.apply(cfg, p, batch) ** 2)))

  (a, ga), (b, gb) = loss(scanned)(params), loss(unrolled)(params)
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5), ga, gb)
  # (that the kinds matter, their windows and RoPE bases, the parity tests against
  # transformers show: tests/test_hf.py)
