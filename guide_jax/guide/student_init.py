"""Using the projected teacher: overwrite the student's random init, and MATCH.

`guide.init` picks the groups that overwrite the random init: 'none', 'embeddings'
(embedding, positions, and the output layer when guide.unembed), or 'blocks' (those plus
the guided blocks, the default). MATCH pulls exactly those leaves toward theta_hat.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from guide_jax import sharding
from guide_jax.guide.projection import guided_layers, project

INIT_MODES = ('none', 'embeddings', 'blocks')


def projected_teacher(teacher_params: dict, teacher_model, student_model, guide_cfg,
                      param_shardings: dict, vocab_rows: int = 0):
  """(theta_hat, layers, diagnostics): the teacher projected into the student's shapes
  (`project` under jit), only the groups `guide.init` selects, placed like the student's
  leaves; the student blocks it writes; and the projection's diagnostics. The one way the
  trainer, the benchmark and AOT build it. Abstract teacher params (ShapeDtypeStructs)
  give an abstract theta_hat and no diagnostics, for compiling without a teacher."""
  layers, _ = guided_layers(teacher_model, student_model, guide_cfg)
  fn = lambda p: project(p, teacher_model, student_model, guide_cfg, vocab_rows)
  shapes = jax.eval_shape(fn, teacher_params)[0]
  placed = sharding.like(shapes, param_shardings)
  if all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(teacher_params)):
    guided, diagnostics = sharding.abstract(shapes, placed), None
  else:
    guided, diagnostics = jax.jit(fn, out_shardings=(placed, None))(teacher_params)
  return selected(guided, guide_cfg.init), layers, diagnostics


def selected(guided: dict, init_mode: str) -> dict:
  """The guided groups that `init_mode` uses."""
  if init_mode == 'none':
    return {}
  if init_mode == 'embeddings':
    return {k: v for k, v in guided.items() if k != 'blocks'}
  return dict(guided)


def apply(student_params: dict, guided: dict, layers: np.ndarray) -> dict:
  """student_params with every guided leaf written in (blocks at student `layers`)."""
  out = dict(student_params)
  for key, value in guided.items():
    if key == 'blocks':
      out['blocks'] = jax.tree.map(lambda full, g: full.at[layers].set(g),
                                   student_params['blocks'], value)
    elif isinstance(value, dict):
      out[key] = {**student_params[key], **value}
    else:
      out[key] = value
  return out


def _pairs(params: dict, guided: dict, layers: np.ndarray):
  """(student leaf, guided leaf) for every guided leaf."""
  for key, value in guided.items():
    if key == 'blocks':
      yield from zip(jax.tree.leaves(jax.tree.map(lambda full, g: full[layers],
                                                  params['blocks'], value)),
                     jax.tree.leaves(value))
    else:
      sub = params[key] if isinstance(value, dict) else {'_': params[key]}
      ref = value if isinstance(value, dict) else {'_': value}
      yield from zip(jax.tree.leaves({k: sub[k] for k in ref}), jax.tree.leaves(ref))


def match_loss(params: dict, guided: dict, layers: np.ndarray) -> jax.Array:
  """sum_g ||theta_S,g - theta_hat_g||^2 / sum_g ||theta_hat_g||^2 (0 with nothing guided)."""
  num = jnp.zeros((), jnp.float32)
  den = jnp.zeros((), jnp.float32)
  for student, target in _pairs(params, guided, layers):
    target = jax.lax.stop_gradient(target.astype(jnp.float32))
    num += jnp.sum(jnp.square(student.astype(jnp.float32) - target))
    den += jnp.sum(jnp.square(target))
  return num / jnp.maximum(den, 1e-30)
