import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from guide_jax import sharding
from guide_jax.data import pipeline
from guide_jax.models import transformer
from guide_jax.train import optimizer, steps

MESHES = [(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 2, 4)]


def mesh_of(shape):
  cfg = ml_collections.ConfigDict(dict(zip(sharding.MESH_AXES, shape)))
  devices = jax.devices()[:int(np.prod(shape))]
  return sharding.make_mesh(cfg, devices)


def loss_and_grad_norm_on(shape, tiny_config):
  """One train step on `shape`: the loss before it and the updated params."""
  c = tiny_config
  mesh, rules = mesh_of(shape), tuple(c.logical_rules)
  m = c.model
  with jax.set_mesh(mesh), sharding.use_rules(rules):
    abstract = transformer.abstract_params(m)
    pshard = sharding.tree_shardings(abstract, transformer.logical_axes(m), mesh, rules)
    tx = optimizer.make(c.train)
    shard = steps.state_shardings(pshard, tx, abstract, mesh)
    init = jax.jit(lambda k: {'params': (p := transformer.init_params(m, k)),
                              'opt_state': tx.init(p), 'step': jnp.zeros((), jnp.int32)},
                   out_shardings=shard)
    state = init(jax.random.key(0))
    step = jax.jit(steps.make_train_step(steps.lm_objective(m, 1e-4), tx, 2,
                                         optimizer.learning_rate_schedule(c.train)),
                   out_shardings=(shard, None))
    batch = sharding.global_batch_from_local(pipeline.synthetic_batch(m.vocab_size, 8, 16), mesh,
                                             rules)
    state, metrics = step(state, batch)
    return float(metrics['loss']), jax.device_get(state['params']), state


@pytest.mark.parametrize('meshes', [
    [(2, 2, 2), (1, 2, 4)],  # every axis sharded at once, and fsdp x tensor
    pytest.param([(8, 1, 1), (2, 4, 1)], marks=pytest.mark.slow)])
def test_same_loss_and_update_on_every_mesh(tiny_config, meshes):
  ref_loss, ref_params, _ = loss_and_grad_norm_on(MESHES[0], tiny_config)
  for shape in meshes:
    loss, params, _ = loss_and_grad_norm_on(shape, tiny_config)
    assert abs(loss - ref_loss) <= 1e-5 * abs(ref_loss), shape
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=str(shape))


def test_params_land_on_their_logical_partition_specs(tiny_config):
  _, _, state = loss_and_grad_norm_on((2, 2, 2), tiny_config)
  params = state['params']
  attn = params['blocks']['attn']
  # rules: embed->fsdp, heads->tensor, kv_heads->tensor, mlp->tensor, vocab->tensor
  assert attn['wq'].sharding.spec == P(None, 'fsdp', 'tensor')
  assert attn['wk'].sharding.spec == P(None, 'fsdp', 'tensor')  # 2 kv heads / tensor=2
  assert attn['wo'].sharding.spec == P(None, 'tensor', None, 'fsdp')
  assert params['blocks']['mlp']['w_gate'].sharding.spec == P(None, 'fsdp', 'tensor')
  assert params['blocks']['mlp']['w_out'].sharding.spec == P(None, 'tensor', 'fsdp')
  assert params['embedding'].sharding.spec == P('tensor', 'fsdp')
  assert params['blocks']['norm1']['scale'].sharding.spec == P(None, 'fsdp')
  # every leaf: the spec its logical axes give under the rules
  axes = transformer.logical_axes(tiny_config.model)
  mesh = state['step'].sharding.mesh
  for x, a in zip(jax.tree.leaves(params), jax.tree.leaves(axes, is_leaf=lambda t: isinstance(t, tuple))):
    assert x.sharding.spec == sharding.spec_for(a, tiny_config.logical_rules, x.shape, mesh)
  # Adam moments follow their parameter.
  mu = state['opt_state'][1][0].mu
  assert mu['blocks']['attn']['wq'].sharding.spec == attn['wq'].sharding.spec


def test_spec_for_rules():
  rules = sharding.DEFAULT_RULES
  assert sharding.spec_for(('act_batch', 'act_length'), rules) == P(('data', 'fsdp'))
  assert sharding.spec_for(('embed', 'mlp'), rules) == P('fsdp', 'tensor')
  # a mesh axis is used once per array
  assert sharding.spec_for(('embed', 'embed'), (('embed', 'fsdp'),)) == P('fsdp')
  mesh = mesh_of((1, 2, 4))
  # 2 kv heads cannot split 4 ways: that dim stays replicated
  assert sharding.spec_for(('embed', 'kv_heads', 'kv'), rules, (64, 2, 16), mesh) == P('fsdp')


@pytest.mark.parametrize('shape,devices,expect', [
    ({'data': -1, 'fsdp': 2, 'tensor': 1}, 8, (4, 2, 1)),
    ({'data': 2, 'fsdp': 2, 'tensor': 2}, 8, (2, 2, 2)),
])
def test_resolve_mesh_shape(shape, devices, expect):
  assert sharding.resolve_mesh_shape(shape, devices) == expect


@pytest.mark.parametrize('shape', [{'data': 3, 'fsdp': 1, 'tensor': 1},
                                   {'data': -1, 'fsdp': -1, 'tensor': 1},
                                   {'data': -1, 'fsdp': 3, 'tensor': 1}])
def test_resolve_mesh_shape_errors(shape):
  with pytest.raises(ValueError, match='mesh'):
    sharding.resolve_mesh_shape(shape, 8)


class _SliceDevice:
  """A stand-in device of a multi-slice pod: only what the mesh code reads."""

  def __init__(self, i, slice_index):
    self.id, self.slice_index, self.platform, self.device_kind = i, slice_index, 'cpu', 'cpu'

  def __repr__(self):
    return f'd{self.id}@s{self.slice_index}'


def test_dcn_axes_span_the_slices_and_multiply_the_ici_axes():
  from guide_jax import config as config_lib
  mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=2, tensor=1, dcn_data=-1, dcn_fsdp=1))
  pod = [_SliceDevice(i, i // 4) for i in range(8)]  # 2 slices of 4
  assert sharding.num_slices(pod) == 2 and sharding.num_slices(jax.devices()) == 1
  assert sharding.mesh_shapes(mesh, pod) == ((2, 2, 1), (2, 1, 1))
  from jax.experimental import mesh_utils
  ici, dcn = sharding.mesh_shapes(mesh, pod)
  array = mesh_utils.create_hybrid_device_mesh(ici, dcn, pod)
  # data is 2 slices x 2: its outer half is slice 0, its inner half slice 1; fsdp and
  # tensor stay inside a slice, so only data traffic crosses the DCN.
  assert array.shape == (4, 2, 1)
  assert [{d.slice_index for d in array[i].ravel()} for i in range(4)] == [{0}, {0}, {1}, {1}]
  mesh.dcn_data, mesh.dcn_fsdp = 1, 2
  assert sharding.mesh_shapes(mesh, pod) == ((2, 2, 1), (1, 2, 1))
  mesh.dcn_fsdp = 1
  with pytest.raises(ValueError, match=r'mesh.dcn_data\*mesh.dcn_fsdp = 1 but the devices span '
                                       r'2 slice\(s\)'):
    sharding.mesh_shapes(mesh, pod)
  # On one slice (this CPU) the DCN factors must be 1: the validation says which field.
  c = config_lib.base_config()
  c.mesh.dcn_data = 2
  with pytest.raises(config_lib.ConfigError, match=r'mesh.dcn_data\*mesh.dcn_fsdp = 2'):
    config_lib.validate(c, 8)
  config_lib.validate(c, 16, num_slices=2)  # 2 slices of 8: the batch 16 shards over 16
  c.mesh.dcn_data = -1
  config_lib.validate(c, 16, num_slices=2)
  c.data.global_batch_size = 8
  with pytest.raises(config_lib.ConfigError, match=r'mesh.data\*mesh.fsdp\*mesh.dcn_data'):
    config_lib.validate(c, 16, num_slices=2)
