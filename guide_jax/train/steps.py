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
import ml_collections
import optax

from guide_jax import guide, losses, sharding
from guide_jax.models import transformer
from guide_jax.train import optimizer

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
                    schedule: optax.Schedule, guard_nonfinite: bool = True):
  """`guard_nonfinite=False` applies every update (only the benchmark's measure of what
  the guard costs uses it)."""

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
    keep_if_not = (lambda new, old: jnp.where(finite, new, old)) if guard_nonfinite else (
        lambda new, old: new)
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


# --- objectives and the compiled step, as trainer, bench and aot build them ---------------


def lm_objective(model_cfg: ml_collections.ConfigDict, z_loss: float,
                 chunk_len: int = 0) -> Objective:
  """Next-token cross-entropy (+ z-loss): the pretraining objective. `chunk_len` > 0 fuses
  the output layer into the loss (losses.chunked_output_sums)."""

  def terms(logits, _, targets, weights):
    sums = losses.cross_entropy_sums(logits, targets, weights)
    return sums['ce'] + z_loss * sums['z'], sums

  def objective(params, batch, step):
    model = transformer.bind(model_cfg, params)
    hidden = model.hidden(batch['inputs'], batch['positions'], batch['segment_ids'])
    if chunk_len:
      return losses.chunked_output_sums(terms, hidden, model.output_kernel(),
                                        batch['targets'], batch['loss_weights'], chunk_len,
                                        jnp.dtype(model_cfg.dtype),
                                        cap=model_cfg.final_logit_softcap)
    return terms(model.logits_from_hidden(hidden), None, batch['targets'],
                 batch['loss_weights'])

  return objective


def distill_objective(student_cfg, teacher_cfg, loss: losses.DistillLoss,
                      layers, chunk_len: int = 0) -> Objective:
  """w_ce CE + w_kd KD (teacher forward under stop_gradient) + w_match MATCH. `chunk_len`
  > 0 fuses both models' output layers into the loss: no [B, S, V] logits are held.
  `teacher_cfg=None`: the teacher is never run; KD reads the batch's cached top-k
  (teacher.logits_dir; losses.sparse_kd_per_token), and batches without one (evaluation)
  get CE and MATCH only."""

  def objective(params, batch, step, teacher_params, theta_hat):
    tokens = (batch['inputs'], batch['positions'], batch['segment_ids'])
    student = transformer.bind(student_cfg, params)
    h_student = student.hidden(*tokens)
    match = guide.match_loss(params, theta_hat, layers) if loss.uses_match else None
    teacher = teacher_chunk = None
    if loss.uses_kd and teacher_cfg is None:
      teacher, teacher_chunk = losses.cached_teacher(batch), lambda cached: cached
    elif loss.uses_kd:
      model = transformer.bind(teacher_cfg, teacher_params)
      teacher = jax.lax.stop_gradient(model.hidden(*tokens))
      w_teacher = jax.lax.stop_gradient(model.output_kernel())
      teacher_chunk = lambda h: losses.output_logits(h, w_teacher, jnp.dtype(student_cfg.dtype),
                                                     teacher_cfg.final_logit_softcap)
    if chunk_len:
      return loss.fused_sums(step, h_student, student.output_kernel(), batch, chunk_len,
                             jnp.dtype(student_cfg.dtype), teacher, teacher_chunk, match,
                             student_cfg.final_logit_softcap)
    if teacher is not None and teacher_cfg is not None:
      teacher = jax.lax.stop_gradient(model.logits_from_hidden(teacher))
    return loss.sums(step, student.logits_from_hidden(h_student), batch, teacher, match)

  return objective


def new_state(params, tx) -> dict:
  """A fresh train state: the params, their optimizer state, and step 0."""
  return {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}


def jit_train_step(objective, tx, train_cfg, state_shardings, in_shardings=None,
                   guard_nonfinite: bool = True):
  """The train step as every caller compiles it (trainer, bench, aot): the state is
  donated, so params update in place, and stays on `state_shardings`. `in_shardings`
  (batch, then the objective's extra inputs) pins those inputs too."""
  step = make_train_step(objective, tx, train_cfg.grad_accum,
                         optimizer.learning_rate_schedule(train_cfg), guard_nonfinite)
  pinned = {} if in_shardings is None else {'in_shardings': (state_shardings, *in_shardings)}
  return jax.jit(step, out_shardings=(state_shardings, None), donate_argnums=(0,), **pinned)


def state_shardings(params_shardings, tx, abstract_params, mesh):
  """Shardings of {'params', 'opt_state', 'step'}: optimizer moments follow their param."""
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, abstract_opt, params_shardings,
      transform_non_params=lambda _: sharding.replicated(mesh))
  return {'params': params_shardings, 'opt_state': opt_shardings,
          'step': sharding.replicated(mesh)}
