"""The jitted train and eval steps, written against an objective function.

An objective maps (params, micro_batch, step) to weighted *sums* of loss terms (see
guide_jax.losses). The train step splits the global batch into `grad_accum` micro-batches,
accumulates gradients of sum / total_weight (so accumulation changes nothing but memory),
and applies one optimizer update, unless the loss or the gradient norm is not finite: then
the state keeps its parameters and optimizer moments (only the step advances) and the
step's `nonfinite` metric says so, for the host's policy (train/nonfinite.py). A diverged
update therefore never reaches the state, so no checkpoint can hold one.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from guide_jax import sharding

# objective(params, batch, step) -> (loss_sum, {metric_name: weighted sum})
Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def split_micro_batches(batch: dict, n: int) -> dict:
  """[B, ...] -> [n, B/n, ...], micro-batch k holding rows k, k+n, ... so every micro-batch
  stays spread over all data shards."""
  def split(x):
    x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
    return sharding.constrain(x, (None, 'act_batch', 'act_length'))
  return jax.tree.map(split, batch)


def make_train_step(objective: Objective, tx: optax.GradientTransformation, grad_accum: int,
                    schedule: optax.Schedule):

  def train_step(state: dict, batch: dict, *extra):
    params, step = state['params'], state['step']
    total_weight = jnp.maximum(jnp.sum(batch['loss_weights']), 1.0)

    def normalized(p, micro):
      loss_sum, sums = objective(p, micro, step, *extra)
      return loss_sum / total_weight, sums

    grad_fn = jax.value_and_grad(normalized, has_aux=True)

    def accumulate(carry, micro):
      grads, loss, sums = carry
      (micro_loss, micro_sums), micro_grads = grad_fn(params, micro)
      return (jax.tree.map(jnp.add, grads, micro_grads), loss + micro_loss,
              jax.tree.map(jnp.add, sums, micro_sums)), None

    micro = split_micro_batches(batch, grad_accum)
    first = jax.tree.map(lambda x: x[0], micro)
    (loss, sums), grads = grad_fn(params, first)
    if grad_accum > 1:
      rest = jax.tree.map(lambda x: x[1:], micro)
      (grads, loss, sums), _ = jax.lax.scan(accumulate, (grads, loss, sums), rest)
    updates, opt_state = tx.update(grads, state['opt_state'], params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep_if_not = lambda new, old: jnp.where(finite, new, old)
    new_state = {'params': jax.tree.map(keep_if_not, optax.apply_updates(params, updates),
                                        params),
                 'opt_state': jax.tree.map(keep_if_not, opt_state, state['opt_state']),
                 'step': step + 1}
    metrics = {'loss': loss, 'grad_norm': grad_norm, 'learning_rate': schedule(step),
               'nonfinite': ~finite, **sums}
    return new_state, metrics

  return train_step


def make_eval_step(objective: Objective):

  def eval_step(params: dict, batch: dict, *extra):
    _, sums = objective(params, batch, jnp.zeros((), jnp.int32), *extra)
    if 'target_bytes' in batch:  # the text's UTF-8 bytes: for bits per byte
      sums = {**sums, 'bytes': jnp.sum(batch['target_bytes'] * batch['loss_weights'])}
    return sums

  return eval_step
