"""Device mesh, logical-axis rules, and the shardings of parameters and batches.

Parameters and activations name their axes logically (`vocab`, `embed`, `heads`, `mlp`,
`layers`, `act_batch`, ...). The config's `logical_rules` map each logical name to a mesh
axis (or a tuple of them, or None for replicated). One mapping function serves parameters,
optimizer state, batches and activation constraints, so they can never disagree.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ('data', 'fsdp', 'tensor')

# MaxText-style defaults: batch over data+fsdp, weights' `embed` dim over fsdp (ZeRO-3),
# heads / mlp / vocab over tensor. Activations use their own names so that an activation's
# embed dim is not sharded over fsdp while its batch already is.
DEFAULT_RULES = (
    ('act_batch', ('data', 'fsdp')),
    ('act_length', None),
    ('act_embed', None),
    ('act_heads', 'tensor'),
    ('act_kv', None),
    ('act_mlp', 'tensor'),
    ('act_vocab', 'tensor'),
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('kv', None),
    ('mlp', 'tensor'),
    ('layers', None),
    ('max_len', None),
)

BATCH_AXES = ('act_batch', 'act_length')


def resolve_mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes with a single -1 filled in; raises ValueError on mismatch.
  Within one slice: the DCN factors (mesh.dcn_*) multiply these across slices."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f'mesh: at most one of {MESH_AXES} may be -1, got {sizes}')
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}')
  if not _fill(sizes, num_devices):
    raise ValueError(f'mesh: {num_devices} devices are not divisible by the fixed axes '
                     f'{dict(zip(MESH_AXES, sizes))}; change mesh.* so they divide it')
  if math.prod(sizes) != num_devices:
    raise ValueError(f'mesh: data*fsdp*tensor = {math.prod(sizes)} but there are '
                     f'{num_devices} devices; set one of mesh.data/fsdp/tensor to -1')
  return tuple(sizes)


def _fill(sizes: list[int], total: int) -> bool:
  """Replace a single -1 in `sizes` by what makes their product `total`; False when the
  fixed sizes do not divide it."""
  if -1 not in sizes:
    return True
  known = math.prod(s for s in sizes if s != -1)
  if total % known:
    return False
  sizes[sizes.index(-1)] = total // known
  return True


DCN_AXES = ('dcn_data', 'dcn_fsdp')  # across slices (data-center network), outside ICI axes


def num_slices(devices: Sequence[jax.Device]) -> int:
  """How many TPU slices the devices span (1 for devices without a slice index: CPU, GPU,
  a single slice)."""
  return len({getattr(d, 'slice_index', 0) for d in devices})


def resolve_dcn_shape(mesh_cfg, slices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) factors across slices: mesh.dcn_data x mesh.dcn_fsdp (one may be
  -1, filled from the slice count) must be the number of slices; tensor never crosses."""
  sizes = [int(mesh_cfg.get(a, 1)) for a in DCN_AXES]
  if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
    raise ValueError(f'mesh.dcn_data={sizes[0]}, mesh.dcn_fsdp={sizes[1]}: each must be '
                     f'positive, or one of them -1 (filled from the slice count)')
  if not _fill(sizes, slices):
    raise ValueError(f'mesh: {slices} slices are not divisible by the fixed DCN axis '
                     f'{dict(zip(DCN_AXES, sizes))}; change mesh.dcn_*')
  if math.prod(sizes) != slices:
    raise ValueError(f'mesh.dcn_data*mesh.dcn_fsdp = {math.prod(sizes)} but the devices span '
                     f'{slices} slice(s); make their product {slices}')
  return sizes[0], sizes[1], 1


def mesh_shapes(mesh_cfg, devices: Sequence[jax.Device]) -> tuple[tuple, tuple]:
  """(ICI shape within a slice, DCN shape across slices) of (data, fsdp, tensor)."""
  slices = num_slices(devices)
  dcn = resolve_dcn_shape(mesh_cfg, slices)
  if len(devices) % slices:
    raise ValueError(f'{len(devices)} devices do not split evenly over {slices} slices')
  return resolve_mesh_shape(mesh_cfg, len(devices) // slices), dcn


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """The (data, fsdp, tensor) mesh. Devices spanning several slices get a hybrid mesh
  (mesh_utils.create_hybrid_device_mesh): each axis is its within-slice size times its
  DCN factor, the DCN factor outermost, so only data and fsdp traffic crosses slices."""
  devices = list(devices if devices is not None else jax.devices())
  ici, dcn = mesh_shapes(mesh_cfg, devices)
  # Auto axis types: the model uses logical annotations and sharding constraints, which
  # jax 0.10's default Explicit axes reject in sharded contractions.
  auto = (jax.sharding.AxisType.Auto,) * 3
  if math.prod(dcn) == 1:
    return jax.make_mesh(ici, MESH_AXES, axis_types=auto, devices=devices)
  from jax.experimental import mesh_utils
  array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                               allow_split_physical_axes=True)
  return jax.sharding.Mesh(array, MESH_AXES, axis_types=auto)


def spec_for(axes: Sequence[str | None], rules, shape: Sequence[int] | None = None,
             mesh: jax.sharding.Mesh | None = None) -> PartitionSpec:
  """PartitionSpec for logical `axes` under `rules`.

  A mesh axis is used at most once per array (first logical dim wins). Given `shape` and
  `mesh`, a dim that the mapped mesh axes do not divide is left replicated: small tensors
  (a 2-kv-head projection on a 4-way tensor axis) still place, and the rest shards.
  """
  rules = dict(rules)
  used: set[str] = set()
  out = []
  for i, name in enumerate(axes):
    target = rules.get(name) if name is not None else None
    mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
    mesh_axes = tuple(a for a in mesh_axes if a not in used)
    if mesh_axes and shape is not None and mesh is not None:
      size = math.prod(mesh.shape[a] for a in mesh_axes)
      if shape[i] % size:
        mesh_axes = ()
    used.update(mesh_axes)
    out.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
  while out and out[-1] is None:
    out.pop()
  return PartitionSpec(*out)


def tree_shardings(abstract_tree, axes_tree, mesh, rules):
  """NamedShardings for a tree of arrays given the matching tree of logical axes."""
  return jax.tree.map(
      lambda x, axes: NamedSharding(mesh, spec_for(axes, rules, x.shape, mesh)),
      abstract_tree, axes_tree)


def batch_sharding(mesh, rules) -> NamedSharding:
  return NamedSharding(mesh, spec_for(BATCH_AXES, rules))


def abstract(shapes, shardings):
  """ShapeDtypeStructs that carry their shardings: restore targets and AOT inputs."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def platform() -> str:
  """The platform of the current mesh ('cpu', 'gpu', 'tpu'), else the default backend's:
  what a step is compiled for (AOT compiles for a TPU topology's mesh on a CPU host)."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.abstract_device is not None:
    return mesh.abstract_device.platform
  return jax.default_backend()


# --- activation constraints -----------------------------------------------------------

_ACTIVE = threading.local()


@contextlib.contextmanager
def use_rules(rules):
  """Activation constraints inside this context follow `rules` (on the context's mesh)."""
  previous = getattr(_ACTIVE, 'rules', None)
  _ACTIVE.rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rules)
  try:
    yield
  finally:
    _ACTIVE.rules = previous


def active_rules():
  """The rules of the innermost `use_rules`, or None outside one."""
  return getattr(_ACTIVE, 'rules', None)


def constrain(x: jax.Array, axes: Sequence[str]) -> jax.Array:
  """with_sharding_constraint by logical names; a no-op with no mesh or no rules active."""
  rules = active_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if rules is None or mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, spec_for(axes, rules, x.shape, mesh))


# --- multi-host -----------------------------------------------------------------------


def maybe_initialize_distributed(dist_cfg) -> None:
  """jax.distributed.initialize when the config or a launcher's environment asks for it.

  `dist_cfg.initialize`: 'auto' initializes when JAX_COORDINATOR_ADDRESS (or a TPU/SLURM
  launcher's variables, which jax detects itself) say this is one of several processes.
  """
  mode = dist_cfg.initialize
  if mode == 'never' or jax.distributed.is_initialized():
    return
  explicit = dist_cfg.coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if mode == 'auto' and not explicit and 'TPU_WORKER_HOSTNAMES' not in os.environ \
      and 'SLURM_JOB_ID' not in os.environ:
    return
  kwargs: dict[str, Any] = {}
  if explicit:
    kwargs['coordinator_address'] = explicit
  if dist_cfg.num_processes > 0:
    kwargs['num_processes'] = dist_cfg.num_processes
  if dist_cfg.process_id >= 0:
    kwargs['process_id'] = dist_cfg.process_id
  jax.distributed.initialize(**kwargs)


def global_batch_from_local(local: dict[str, np.ndarray], mesh, rules) -> dict[str, jax.Array]:
  """Assemble each process's rows of the global batch into global sharded arrays."""
  sharding = batch_sharding(mesh, rules)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def like(subset: dict, full: dict) -> dict:
  """The leaves of `full` at the keys of `subset` (e.g. shardings of the guided leaves)."""
  return {k: like(v, full[k]) if isinstance(v, dict) else full[k] for k, v in subset.items()}
