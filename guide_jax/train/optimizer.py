"""AdamW with linear warmup + cosine decay and global-norm clipping, over the student only."""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(t: ml_collections.ConfigDict) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.learning_rate, warmup_steps=t.warmup_steps,
      decay_steps=t.steps, end_value=t.learning_rate * t.min_lr_ratio)


def _decays(path, _) -> bool:
  # Norm gains and biases are not decayed; every weight matrix and embedding table is.
  name = str(getattr(path[-1], 'key', path[-1]))
  return name != 'scale' and not name.startswith('b')


def make(t: ml_collections.ConfigDict) -> optax.GradientTransformation:
  weight_decay_mask = lambda params: jax.tree_util.tree_map_with_path(_decays, params)
  adamw = optax.adamw(learning_rate_schedule(t), b1=t.b1, b2=t.b2,
                      weight_decay=t.weight_decay, mask=weight_decay_mask)
  if t.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(t.grad_clip), adamw)
  return adamw
