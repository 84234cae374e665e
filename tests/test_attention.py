"""The attention kernels (models/attention.py) against one dense reference, and their choice.

Splash runs in the Pallas interpreter here (float32); cuDNN's call is checked through
jax.nn.dot_product_attention's own XLA implementation (the same arguments: causal flag,
window, segment mask), since this machine has no GPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from guide_jax import config as config_lib
from guide_jax import sharding
from guide_jax.models import attention, transformer

B, T, L = 4, 256, 16


def attention_cfg(**overrides):
  m = config_lib.model_config()
  m.update(dict(splash_block_q=128, splash_block_kv=128, query_chunks=1))
  m.update(overrides)
  return m


def reference(q, k, v, segment_ids, window=0, cap=0.0):
  """Dense attention from the definition: every (query, key) score, masked, softmaxed."""
  h, hkv, l = q.shape[2], k.shape[2], q.shape[3]
  k, v = (jnp.repeat(x, h // hkv, axis=2) for x in (k, v))
  s = jnp.einsum('bthl,bshl->bhts', q, k, precision='highest') / np.sqrt(l)
  if cap:
    s = cap * jnp.tanh(s / cap)
  i, j = np.arange(q.shape[1])[:, None], np.arange(q.shape[1])[None, :]
  allowed = (j <= i) & ((i - j < window) if window else True)
  mask = allowed[None, None] & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
  p = jax.nn.softmax(jnp.where(mask, s, -1e30), axis=-1)
  return jnp.einsum('bhts,bshl->bthl', p, v, precision='highest')


def packed_with_padding():
  """Row 0: three documents then padding (segment 0); row 2: two; rows 1 and 3: one."""
  seg = np.ones((B, T), np.int32)
  seg[0, :70], seg[0, 70:150], seg[0, 150:230], seg[0, 230:] = 1, 2, 3, 0
  seg[2, 129:] = 2
  return jnp.asarray(seg)


def qkv(h, hkv, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (B, T, h, L)), jax.random.normal(keys[1], (B, T, hkv, L)),
          jax.random.normal(keys[2], (B, T, hkv, L)))


KERNELS = {
    'xla': attention.chunked_xla_attention,
    'splash': attention.splash_attention,
    'sdpa': lambda q, k, v, s, cfg: attention.fused_sdpa(q, k, v, s, cfg, 'xla'),
}

CASES = {  # (query heads, kv heads, window, soft-cap)
    'causal': (4, 4, 0, 0.0),
    'gqa': (4, 2, 0, 0.0),
    'mqa': (4, 1, 0, 0.0),
    'window': (4, 2, 48, 0.0),
    'softcap': (4, 2, 0, 5.0),
    'window_softcap': (2, 1, 100, 3.0),
}


def _check(kernel, h, hkv, window, cap, cfg_overrides=None, mesh=None):
  cfg = attention_cfg(sliding_window=window, attn_logit_softcap=cap, **(cfg_overrides or {}))
  q, k, v = qkv(h, hkv)
  seg = packed_with_padding()
  cotangent = jax.random.normal(jax.random.key(9), q.shape)

  def loss(fn):
    return lambda q, k, v: jnp.sum(fn(q, k, v, seg) * cotangent)

  got_fn = lambda q, k, v, s: KERNELS[kernel](q, k, v, s, cfg)
  want_fn = lambda q, k, v, s: reference(q, k, v, s, window, cap)
  want = jax.jit(want_fn)(q, k, v, seg)
  want_grads = jax.jit(jax.grad(loss(want_fn), argnums=(0, 1, 2)))(q, k, v)
  if mesh is None:
    got = jax.jit(got_fn)(q, k, v, seg)
    got_grads = jax.jit(jax.grad(loss(got_fn), argnums=(0, 1, 2)))(q, k, v)
  else:
    rules = sharding.DEFAULT_RULES
    with jax.set_mesh(mesh), sharding.use_rules(rules):
      rows = NamedSharding(mesh, P(('data', 'fsdp')))
      q, k, v, seg = jax.device_put((q, k, v, seg), rows)
      got = jax.jit(got_fn)(q, k, v, seg)
      got_grads = jax.jit(jax.grad(loss(got_fn), argnums=(0, 1, 2)))(q, k, v)
      jaxpr = str(jax.make_jaxpr(got_fn)(q, k, v, seg))
    assert 'shard_map' in jaxpr
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


# window and soft-cap alone are slow-marked for xla and splash: window_softcap has both
SLOW_CASES = {('xla', 'window'), ('xla', 'softcap'), ('splash', 'window'),
              ('splash', 'softcap'), ('splash', 'gqa')}


@pytest.mark.parametrize('kernel,case', [
    pytest.param(k, c, marks=pytest.mark.slow) if (k, c) in SLOW_CASES else (k, c)
    for k in sorted(KERNELS) for c in sorted(CASES)])
def test_kernel_equals_dense_reference(kernel, case):
  """Forward and gradients at 1e-5 (float32): causal, packed documents with padding,
  grouped and single kv heads, a left window, soft-cap on and off."""
  h, hkv, window, cap = CASES[case]
  if kernel == 'sdpa' and cap:
    pytest.skip('jax.nn.dot_product_attention has no soft-cap (auto never sends it there)')
  _check(kernel, h, hkv, window, cap, dict(query_chunks=3) if kernel == 'xla' else None)


@pytest.mark.parametrize('tensor,hkv', [(2, 2), (2, 1)])
def test_splash_under_shard_map_on_a_2x2x2_mesh(tensor, hkv):
  """Rows over data x fsdp, heads over tensor; with one kv head the tensor axis cannot
  split kv heads, so they are repeated to the query heads first."""
  _check('splash', 4, hkv, 64, 2.0, mesh=sharding.make_mesh(_mesh_cfg(tensor)))


def _mesh_cfg(tensor):
  c = config_lib.base_config().mesh
  c.update(dict(data=2, fsdp=8 // (2 * tensor), tensor=tensor))
  return c


def test_model_with_splash_equals_xla_on_a_mesh():
  """The whole model (teacher-style GQA, RoPE, packed rows) through splash on a 2x2x2
  mesh: logits and parameter gradients equal the xla kernel's."""
  m = config_lib.model_config()
  m.update(dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                mlp_dim=64, max_len=128, position='rope', sliding_window=40,
                splash_block_q=128, splash_block_kv=128))
  t = 128
  seg = np.ones((4, t), np.int32)
  seg[0, 50:], seg[2, 100:] = 2, 0
  pos = np.concatenate([np.arange(50), np.arange(t - 50)])[None].repeat(4, 0)
  batch = {'inputs': jnp.asarray(np.random.default_rng(1).integers(0, 64, (4, t))),
           'positions': jnp.asarray(pos), 'segment_ids': jnp.asarray(seg)}
  params = transformer.init_params(m, jax.random.key(1))
  mesh = sharding.make_mesh(_mesh_cfg(2))
  out = {}
  for kernel in ('xla', 'splash'):
    mk = m.copy_and_resolve_references()
    mk.attention_kernel = kernel
    loss = lambda p, mk=mk: transformer.apply(mk, p, batch).mean()
    with jax.set_mesh(mesh), sharding.use_rules(sharding.DEFAULT_RULES):
      out[kernel] = (jax.jit(lambda p, mk=mk: transformer.apply(mk, p, batch))(params),
                     jax.jit(jax.grad(loss))(params))
  np.testing.assert_allclose(out['splash'][0], out['xla'][0], atol=1e-5, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
               out['splash'][1], out['xla'][1])


def test_auto_chooses_by_platform(caplog):
  auto = attention_cfg()
  assert attention.choose(auto, 256, 'cpu') == 'xla'
  assert attention.choose(auto, 256, 'tpu') == 'splash'
  assert attention.choose(attention_cfg(dtype='bfloat16'), 256, 'gpu') == 'cudnn'
  # where the shapes or dtype do not allow it: xla, with the reason logged once
  attention._EXPLAINED.clear()
  with caplog.at_level('WARNING'):
    assert attention.choose(auto, 200, 'tpu') == 'xla'
    assert attention.choose(auto, 200, 'tpu') == 'xla'
    assert attention.choose(auto, 256, 'gpu') == 'xla'  # float32
    assert attention.choose(attention_cfg(dtype='bfloat16', attn_logit_softcap=30.0),
                            256, 'gpu') == 'xla'
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 3, lines
  assert 'data.seq_len=200 is not divisible by model.splash_block_q=128' in lines[0]
  assert "model.dtype='float32'" in lines[1] and 'soft-cap' in lines[2]
  assert attention.choose(attention_cfg(attention_kernel='xla'), 200, 'tpu') == 'xla'


@pytest.mark.parametrize('overrides,platform,seq_len,message', [
    (dict(attention_kernel='cudnn', dtype='bfloat16'), 'cpu', 256, 'needs an NVIDIA GPU'),
    (dict(attention_kernel='cudnn'), 'gpu', 256, "model.dtype='float32'"),
    (dict(attention_kernel='cudnn', dtype='bfloat16', head_dim=256), 'gpu', 256,
     'model.head_dim=256'),
    (dict(attention_kernel='splash'), 'gpu', 256, 'is a TPU kernel'),
    (dict(attention_kernel='splash'), 'tpu', 384, 'not divisible by model.splash_block_q=256'),
    (dict(attention_kernel='splash', splash_block_q=128), 'tpu', 384,
     'not divisible by model.splash_block_kv=256'),
    (dict(attention_kernel='splash', splash_block_q=96, splash_block_kv=96), 'tpu', 192,
     'multiple of 128'),
])
def test_explicit_kernels_refuse_what_they_cannot_run(overrides, platform, seq_len, message):
  cfg = attention_cfg(splash_block_q=256, splash_block_kv=256)
  cfg.update(overrides)
  with pytest.raises(attention.AttentionError, match=message):
    attention.choose(cfg, seq_len, platform)
  c = config_lib.base_config()
  c.model.update(cfg)
  c.model.max_len = c.data.seq_len = seq_len
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(c, 8, platform=platform)


def test_teacher_attention_kernel_overrides_the_stored_one():
  from guide_jax import saved_model
  stored = attention_cfg(attention_kernel='cudnn', dtype='bfloat16')
  assert saved_model.runtime_model(stored, 'bfloat16').attention_kernel == 'cudnn'
  running = saved_model.runtime_model(stored, 'bfloat16', 'splash')
  assert running.attention_kernel == 'splash' and stored.attention_kernel == 'cudnn'
  assert attention.choose(running, 256, 'tpu') == 'splash'
