"""Token-level losses as (sum, weight) pairs, in float32.

Every loss returns sums over tokens weighted by the batch's loss_weights, never means: a
step divides by the global weight once, so gradient accumulation, padding and the number
of hosts cannot bias the average.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array
                       ) -> dict[str, jax.Array]:
  """Weighted sums of next-token CE, z-loss term log(Z)^2, and top-1 hits."""
  logits = logits.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  ce = log_z - target_logit
  hits = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  return {'ce': jnp.sum(ce * weights), 'z': jnp.sum(jnp.square(log_z) * weights),
          'correct': jnp.sum(hits * weights), 'weight': jnp.sum(weights)}
