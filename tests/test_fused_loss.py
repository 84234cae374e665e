"""The fused, chunked output layer + CE + KD equals the unfused losses and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from guide_jax import config as config_lib
from guide_jax import losses, sharding
from guide_jax.models import transformer
from guide_jax.train import optimizer, steps


def _model(**kw):
  m = config_lib.model_config()
  m.update(dict(vocab_size=96, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=8,
                mlp_dim=48, max_len=32, position='rope', tie_embeddings=False))
  m.update(kw)
  return m


def _batch(b=4, s=32, v=96):
  rng = np.random.default_rng(0)
  seg = np.ones((b, s), np.int32)
  seg[1, 13:] = 2                                  # a packed second document
  pos = np.where(seg == 2, np.arange(s) - 13, np.arange(s)).astype(np.int32)
  weights = np.ones((b, s), np.float32)
  weights[2, 20:] = 0.0                            # padding
  return {'inputs': rng.integers(0, v, (b, s), dtype=np.int32),
          'targets': rng.integers(0, v, (b, s), dtype=np.int32),
          'segment_ids': seg, 'positions': pos, 'loss_weights': weights}


def _loss(kind, temperature):
  cfg = losses.loss_config()
  cfg.update(dict(kd_kind=kind, temperature=temperature))
  cfg.kd = losses.weight_config(0.7)
  return losses.DistillLoss(cfg, 100, z_loss=1e-3)


@pytest.fixture(scope='module')
def setup():
  student, teacher = _model(), _model(d_model=48, n_heads=6, n_kv_heads=3, mlp_dim=64)
  cfg = config_lib.base_config()
  cfg.mesh.update(dict(data=2, fsdp=2, tensor=2))  # the vocabulary on the tensor axis
  mesh, rules = sharding.make_mesh(cfg.mesh), tuple(cfg.logical_rules)
  with jax.set_mesh(mesh), sharding.use_rules(rules):
    _, s_shard = transformer.abstract_params_and_shardings(student, mesh, rules)
    _, t_shard = transformer.abstract_params_and_shardings(teacher, mesh, rules)
    sp = jax.jit(lambda k: transformer.init_params(student, k), out_shardings=s_shard)(
        jax.random.key(0))
    tp = jax.jit(lambda k: jax.tree.map(lambda x: 3 * x, transformer.init_params(teacher, k)),
                 out_shardings=t_shard)(jax.random.key(1))
    batch = jax.device_put(_batch(), sharding.batch_sharding(mesh, rules))
  assert sp['embedding'].sharding.spec[0] == 'tensor'
  return student, teacher, sp, tp, batch, mesh, rules


def _value_and_grad(objective, sp, batch, *extra, mesh, rules):
  with jax.set_mesh(mesh), sharding.use_rules(rules):
    fn = jax.jit(jax.value_and_grad(lambda p: objective(p, batch, 7, *extra), has_aux=True))
    return jax.device_get(fn(sp))


@pytest.mark.parametrize('kind,temperature', [  # the kinds' sums are shared with unfused
    ('forward_kl', 2.5), pytest.param('reverse_kl', 2.5, marks=pytest.mark.slow),
    ('jsd', 1.0)])
def test_fused_distill_loss_and_gradients_equal_unfused(setup, kind, temperature):
  student, teacher, sp, tp, batch, mesh, rules = setup
  loss = _loss(kind, temperature)
  out = {}
  for chunk in (0, 8):
    objective = steps.distill_objective(student, teacher, loss, np.array([0]), chunk)
    out[chunk] = _value_and_grad(objective, sp, batch, tp, {}, mesh=mesh, rules=rules)
  assert float(out[0][0][1]['kd']) > 0.1
  assert_same_loss_sums_and_grads(out[8], out[0])


def assert_same_loss_sums_and_grads(fused, unfused):
  (loss0, sums0), grads0 = unfused
  (loss8, sums8), grads8 = fused
  assert set(sums0) == set(sums8)
  np.testing.assert_allclose(loss8, loss0, rtol=1e-5)
  for name in sums0:  # ce, z, correct, weight, kd, teacher_ce, agreement
    np.testing.assert_allclose(sums8[name], sums0[name], rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
               grads8, grads0)


def test_fused_lm_loss_and_gradients_equal_unfused(setup):
  student, _, sp, _, batch, mesh, rules = setup
  (l0, s0), g0 = _value_and_grad(steps.lm_objective(student, 1e-3, 0), sp, batch,
                                 mesh=mesh, rules=rules)
  (l4, s4), g4 = _value_and_grad(steps.lm_objective(student, 1e-3, 4), sp, batch,
                                 mesh=mesh, rules=rules)
  np.testing.assert_allclose(l4, l0, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), s4, s0)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g4, g0)


def test_chunk_len_resolution_and_validation():
  assert losses.resolve_chunk_len(-1, 2048) == 256
  assert losses.resolve_chunk_len(-1, 256) == 0 and losses.resolve_chunk_len(-1, 300) == 0
  assert losses.resolve_chunk_len(64, 256) == 64 and losses.resolve_chunk_len(0, 4096) == 0
  c = config_lib.base_config()
  c.loss.chunk_len = 100
  with pytest.raises(config_lib.ConfigError, match='loss.chunk_len=100'):
    config_lib.validate(c, 1)


def test_fused_step_holds_no_full_logits():
  """XLA's temporaries of the KD train step shrink when the output layer is fused."""
  cfg = config_lib.load_experiment_module('guide_tiny').get_config()
  cfg.model.update(dict(vocab_size=8192))
  cfg.teacher.pretrain.model.update(dict(vocab_size=8192))
  cfg.data.update(dict(seq_len=64, global_batch_size=8, backend='synthetic'))
  temps = {}
  for chunk in (0, 8):
    student, teacher = cfg.model, cfg.teacher.pretrain.model
    loss = _loss('forward_kl', 1.0)
    objective = steps.distill_objective(student, teacher, loss, np.array([0]), chunk)
    tx = optimizer.make(cfg.train)
    params = transformer.abstract_params(student)
    state = jax.eval_shape(lambda p: steps.new_state(p, tx), params)
    batch = jax.eval_shape(lambda: jax.tree.map(jnp.asarray, _batch(8, 64, 8192)))
    step = jax.jit(lambda st, b, t: steps.make_train_step(
        objective, tx, 1, lambda s: 0.1)(st, b, t, {}))
    compiled = step.lower(state, batch, transformer.abstract_params(teacher)).compile()
    temps[chunk] = compiled.memory_analysis().temp_size_in_bytes
  logits_bytes = 8 * 64 * 8192 * 4
  assert temps[0] - temps[8] > 2 * logits_bytes, temps


def test_final_logit_softcap_holds_in_the_fused_loss_too(setup):
  """Gemma 2's final soft-cap on both models: the fused output layer caps each chunk's
  logits as the model's own output does (loss and gradients equal the unfused path's)."""
  student, teacher, sp, tp, batch, mesh, rules = setup
  capped_s, capped_t = student.copy_and_resolve_references(), teacher.copy_and_resolve_references()
  capped_s.final_logit_softcap, capped_t.final_logit_softcap = 0.3, 0.5
  loss = _loss('forward_kl', 1.0)
  out = {}
  for chunk in (0, 8):
    objective = steps.distill_objective(capped_s, capped_t, loss, np.array([0]), chunk)
    out[chunk] = _value_and_grad(objective, sp, batch, tp, {}, mesh=mesh, rules=rules)
  assert_same_loss_sums_and_grads(out[8], out[0])
  with jax.set_mesh(mesh), sharding.use_rules(rules):  # the cap bites: |z| <= c
    plain, capped = (np.abs(np.asarray(transformer.apply(m, tp, batch))).max()
                     for m in (teacher, capped_t))
  assert capped <= 0.5 < plain
