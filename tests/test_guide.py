"""GUIDE's mathematical properties (GUIDE_METHOD.md sections 1-3)."""

import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from guide_jax import config as config_lib
from guide_jax import guide, sharding
from guide_jax.models import transformer


def model(**kw):
  m = config_lib.model_config()
  m.update(dict(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=8,
                mlp_dim=48, max_len=16, norm_eps=1e-12))
  m.update(kw)
  return m


def guide_cfg(**kw):
  g = config_lib.guide_config()
  g.update(kw)
  return g


def random_teacher(t, seed=0):
  """Teacher params with non-trivial norm gains and biases (so folding is exercised)."""
  params = transformer.init_params(t, jax.random.key(seed))
  leaves, tree = jax.tree_util.tree_flatten_with_path(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  out = []
  for (path, x), k in zip(leaves, keys):
    name = str(path[-1].key)
    if name == 'scale':
      x = 1.0 + 0.5 * jax.random.normal(k, x.shape)
    elif name == 'bias' or name.startswith('b'):
      x = 0.1 * jax.random.normal(k, x.shape)
    elif name in ('wo', 'w_out'):
      x = x * 10  # make block writes visible next to the embedding
    out.append(x)
  return jax.tree_util.tree_unflatten(tree, [x for x in out])


def inputs(t, b=2, n=12, seed=0):
  tokens = np.random.default_rng(seed).integers(0, t.vocab_size, (b, n))
  seg = np.ones((b, n), np.int32)
  seg[1, 7:] = 2
  pos = np.concatenate([np.arange(n)[None], np.r_[np.arange(7), np.arange(5)][None]])
  return jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(seg)


def student_from(tp, t, s, g, seed=5):
  guided, diag = guide.project(tp, t, s, g)
  layers, _ = guide.guided_layers(t, s, g)
  sp = guide.apply(transformer.init_params(s, jax.random.key(seed)), guided, layers)
  return sp, guided, diag


FAMILIES = list(itertools.product(['learned', 'rope'], [4, 2], ['gelu', 'swiglu']))


@pytest.mark.parametrize('position,kv,mlp', FAMILIES)
def test_residual_after_block0_attention_is_teacher_times_m(position, kv, mlp):
  t = model(position=position, n_kv_heads=kv, mlp=mlp)
  s = model(position=position, n_kv_heads=kv, mlp=mlp, d_model=20, n_layers=1)
  tp = random_teacher(t)
  sp, _, diag = student_from(tp, t, s, guide_cfg())
  m = diag['projection']
  tokens, pos, seg = inputs(t)
  T, S = transformer.bind(t, tp), transformer.bind(s, sp)
  x0_t, x0_s = T.embed_inputs(tokens, pos), S.embed_inputs(tokens, pos)
  np.testing.assert_allclose(x0_s, x0_t @ m, atol=1e-5, rtol=1e-5)
  r_t = T.layer(0).attention_residual(x0_t @ m @ m.T, pos, seg)
  r_s = S.layer(0).attention_residual(x0_s, pos, seg)
  assert float(jnp.abs(r_t - x0_t @ m @ m.T).max()) > 1e-2  # attention wrote something
  np.testing.assert_allclose(r_s, r_t @ m, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('position,kv,mlp', FAMILIES)
def test_full_width_student_reproduces_teacher_logits(position, kv, mlp):
  t = model(position=position, n_kv_heads=kv, mlp=mlp, tie_embeddings=False)
  s = model(position=position, n_kv_heads=kv, mlp=mlp, tie_embeddings=False)
  tp = random_teacher(t)
  sp, _, _ = student_from(tp, t, s, guide_cfg(blocks='all', unembed=True))
  batch = dict(zip(('inputs', 'positions', 'segment_ids'), inputs(t)))
  lt, ls = transformer.apply(t, tp, batch), transformer.apply(s, sp, batch)
  np.testing.assert_allclose(ls, lt, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('scaling', ['none', 'llama3'])
def test_rope_head_width_selection_keeps_teacher_frequencies(scaling):
  """l_T = 2 l_S: the student's rotated q/k equal the teacher's on the selected pairs,
  also under Llama 3's frequency rescaling (original length 64: all three of its bands)."""
  rope = dict(position='rope', rope_scaling=scaling, rope_original_max_len=64)
  t = model(head_dim=16, **rope)
  s = model(head_dim=8, **rope)
  tp = random_teacher(t)
  sp, _, _ = student_from(tp, t, s, guide_cfg())  # d_S == d_T: M is square
  dims = guide.head_dim_selection(t, s)
  np.testing.assert_array_equal(dims, [0, 2, 4, 6, 8, 10, 12, 14])
  tokens, pos, _ = inputs(t)
  T, S = transformer.bind(t, tp), transformer.bind(s, sp)
  u_t = T.layer(0).norm1(T.embed_inputs(tokens, pos))
  u_s = S.layer(0).norm1(S.embed_inputs(tokens, pos))
  q_t = transformer.apply_rope(jnp.einsum('btd,dhl->bthl', u_t, tp['blocks']['attn']['wq'][0]),
                               pos, transformer.rope_frequencies(t.head_dim, t))
  q_s = transformer.apply_rope(jnp.einsum('btd,dhl->bthl', u_s, sp['blocks']['attn']['wq'][0]),
                               pos, transformer.rope_frequencies(s.head_dim, s))
  np.testing.assert_allclose(q_s, q_t[..., dims], atol=1e-4, rtol=1e-4)


def test_rope_selection_that_cannot_be_exact_is_refused():
  with pytest.raises(guide.GuideError, match='model.head_dim=6 must divide'):
    guide.check_compatible(model(position='rope', head_dim=16),
                           model(position='rope', head_dim=6), guide_cfg())


@pytest.mark.parametrize('field,value', [('d_model', 40), ('n_heads', 8), ('mlp_dim', 64),
                                         ('head_dim', 16), ('vocab_size', 60),
                                         ('max_len', 32)])
def test_incompatible_students_are_refused_naming_the_field(field, value):
  with pytest.raises(guide.GuideError, match=f'model.{field}={value}'):
    guide.check_compatible(model(), model(**{field: value}), guide_cfg())


def test_gqa_ratio_is_checked():
  with pytest.raises(guide.GuideError, match='query heads per kv head'):
    guide.check_compatible(model(n_kv_heads=4), model(n_heads=4, n_kv_heads=2), guide_cfg())


def test_uniform_selection():
  np.testing.assert_array_equal(guide.uniform_selection(8, 4), [0, 2, 4, 6])
  np.testing.assert_array_equal(guide.uniform_selection(5, 3), [0, 1, 3])
  np.testing.assert_array_equal(guide.uniform_selection(7, 7), np.arange(7))


def test_head_selection_keeps_kv_groups():
  t = model(n_heads=8, n_kv_heads=2)
  q, kv = guide.head_selection(t, model(n_heads=4, n_kv_heads=1))
  np.testing.assert_array_equal(kv, [0])
  np.testing.assert_array_equal(q, [0, 1, 2, 3])
  q, kv = guide.head_selection(t, model(n_heads=2, n_kv_heads=2))
  np.testing.assert_array_equal(kv, [0, 1])
  np.testing.assert_array_equal(q, [0, 4])
  q, kv = guide.head_selection(t, model(n_heads=4, n_kv_heads=2))
  np.testing.assert_array_equal(q, [0, 2, 4, 6])
  # every student query head's teacher head belongs to the teacher kv group it was given
  s = model(n_heads=4, n_kv_heads=2)
  for j, head in enumerate(q):
    assert head // (t.n_heads // t.n_kv_heads) == kv[j // (s.n_heads // s.n_kv_heads)]


@pytest.mark.parametrize('d,h,kv,l,f', [(32, 4, 2, 8, 48), (20, 4, 2, 8, 48), (32, 2, 2, 8, 48),
                                        (32, 2, 1, 8, 48), (32, 4, 2, 5, 48),
                                        (32, 4, 2, 8, 17),
                                        pytest.param(24, 2, 1, 4, 30, marks=pytest.mark.slow)])
def test_projected_shapes_for_every_smaller_dimension(d, h, kv, l, f):
  t = model(n_heads=8, n_kv_heads=4, d_model=32, head_dim=8, mlp_dim=48, use_bias=True,
            norm='layernorm', tie_embeddings=False, n_layers=3)
  s = model(d_model=d, n_heads=h, n_kv_heads=kv, head_dim=l, mlp_dim=f, use_bias=True,
            norm='layernorm', tie_embeddings=False, n_layers=2)
  g = guide_cfg(blocks='all', unembed=True, center=True, pca_rows='embed+pos',
                attn_logit_rescale=True, rescale_outputs=True)
  guide.check_compatible(t, s, g)
  guided, _ = guide.project(random_teacher(t), t, s, g)
  abstract = transformer.abstract_params(s)
  assert set(guided) == {'embedding', 'pos_embedding', 'blocks', 'unembed', 'final_norm'}
  for key, value in guided.items():  # blocks='all': every student block is guided
    assert jax.tree.map(lambda x: x.shape, value) == \
        jax.tree.map(lambda x: x.shape, abstract[key]), key


# --- M ------------------------------------------------------------------------------------


def test_pca_basis_properties():
  t = model(d_model=32)
  tp = random_teacher(t)
  m, eig, explained = guide.pca_basis(tp, 12, center=False, pca_rows='embed')
  np.testing.assert_allclose(m.T @ m, np.eye(12), atol=1e-5)
  assert np.all(np.diff(np.asarray(eig)) <= 1e-6)
  np.testing.assert_allclose(explained, eig[:12].sum() / eig.sum(), rtol=1e-5)
  pivot = np.take_along_axis(np.asarray(m), np.abs(np.asarray(m)).argmax(0)[None], 0)
  assert (pivot > 0).all()
  m2, _, _ = guide.pca_basis(jax.tree.map(lambda x: -x, tp), 12, False, 'embed')
  np.testing.assert_allclose(m2, m, atol=1e-5)  # signs do not depend on the table's sign
  # C's eigenvectors: E^T E m = m diag(eig)
  e = np.asarray(tp['embedding'])
  np.testing.assert_allclose(e.T @ e @ m, m * eig[:12], rtol=1e-3, atol=1e-3)


def test_centered_and_embed_pos_rows():
  t = model()
  tp = random_teacher(t)
  _, eig_c, _ = guide.pca_basis(tp, 8, True, 'embed')
  e = np.asarray(tp['embedding'], np.float64)
  ec = e - e.mean(0)
  np.testing.assert_allclose(eig_c, np.linalg.eigvalsh(ec.T @ ec)[::-1], rtol=1e-4, atol=1e-4)
  _, eig_p, _ = guide.pca_basis(tp, 8, False, 'embed+pos')
  a = np.concatenate([e, np.asarray(tp['pos_embedding'])])
  np.testing.assert_allclose(eig_p, np.linalg.eigvalsh(a.T @ a)[::-1], rtol=1e-4, atol=1e-4)


def test_centered_pca_keeps_the_subspace_when_the_mean_is_large():
  # Rows whose mean is 100x their spread: C - n mu mu^T in float32 lost the subspace to
  # ~1e-2; centring the rows first keeps it to float32 precision against float64.
  rng = np.random.default_rng(0)
  e = rng.normal(size=(512, 32)) * np.linspace(2.0, 0.2, 32) + 100.0 * rng.normal(size=32)
  m, _, _ = guide.pca_basis({'embedding': jnp.asarray(e, jnp.float32)}, 8, True, 'embed')
  ec = e - e.mean(0)
  _, vecs = np.linalg.eigh(ec.T @ ec)
  ref = vecs[:, ::-1][:, :8]
  # The projector onto the subspace, so signs and rotations within it do not matter.
  np.testing.assert_allclose(np.asarray(m, np.float64) @ np.asarray(m, np.float64).T,
                             ref @ ref.T, atol=1e-5)


def test_padded_rows_stay_out_of_the_centred_pca():
  rng = np.random.default_rng(1)
  e = rng.normal(size=(40, 16)) + 3.0
  padded = np.concatenate([e, 50.0 + rng.normal(size=(8, 16))])  # rows no token produces
  m, eig, _ = guide.pca_basis({'embedding': jnp.asarray(padded, jnp.float32)}, 4, True,
                              'embed', vocab_rows=40)
  ec = e - e.mean(0)
  np.testing.assert_allclose(eig, np.linalg.eigvalsh(ec.T @ ec)[::-1], rtol=1e-4, atol=1e-4)


def _sharded_project(shape, t, s, g, tp):
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(zip(sharding.MESH_AXES, shape))),
                            jax.devices()[:int(np.prod(shape))])
  rules = sharding.DEFAULT_RULES
  with jax.set_mesh(mesh), sharding.use_rules(rules):
    t_shard = sharding.tree_shardings(transformer.abstract_params(t),
                                      transformer.logical_axes(t), mesh, rules)
    tp = jax.device_put(tp, t_shard)
    assert tp['embedding'].sharding.spec != jax.sharding.PartitionSpec()
    guided, diag = jax.jit(lambda p: guide.project(p, t, s, g))(tp)
    return jax.device_get(guided), jax.device_get(diag)


def test_project_is_the_same_sharded_and_unsharded():
  t = model(vocab_size=64, n_kv_heads=2, n_heads=4)
  s = model(vocab_size=64, d_model=16, n_heads=2, n_kv_heads=1, head_dim=4, mlp_dim=24)
  g = guide_cfg(blocks='all')
  tp = random_teacher(t)
  ref, ref_diag = jax.device_get(guide.project(tp, t, s, g))
  for shape in [(2, 4, 1), (1, 2, 4)]:
    got, diag = _sharded_project(shape, t, s, g, tp)
    np.testing.assert_allclose(diag['projection'], ref_diag['projection'], atol=1e-5)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_match_is_zero_right_after_init_and_positive_after_a_change():
  t, s = model(), model(d_model=16, n_heads=2, n_kv_heads=2, mlp_dim=24)
  tp = random_teacher(t)
  g = guide_cfg()
  sp, guided, _ = student_from(tp, t, s, g)
  layers, _ = guide.guided_layers(t, s, g)
  chosen = guide.selected(guided, 'blocks')
  assert float(guide.match_loss(sp, chosen, layers)) == 0.0
  moved = jax.tree.map(lambda x: x + 0.01, sp)
  assert float(guide.match_loss(moved, chosen, layers)) > 0
  # unguided blocks keep their random init
  rand = transformer.init_params(s, jax.random.key(5))
  np.testing.assert_array_equal(sp['blocks']['attn']['wq'][1], rand['blocks']['attn']['wq'][1])
  only_emb = guide.apply(rand, guide.selected(guided, 'embeddings'), layers)
  np.testing.assert_array_equal(only_emb['blocks']['attn']['wq'], rand['blocks']['attn']['wq'])
  np.testing.assert_array_equal(only_emb['embedding'], guided['embedding'])
