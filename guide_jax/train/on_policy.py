"""On-policy distillation: the student samples continuations, the teacher grades every token.

`loss.on_policy.fraction` of each batch's rows are replaced, every step, by rows the student
writes itself (GKD; the recipe behind Qwen3's small models):
  prompt   a row's first document's first `prompt_len` tokens (fewer when that document
           piece is shorter), left-padded to prompt_len as the sampler wants them
  sample   `new_tokens` tokens from the current student's parameters with the KV-cache
           sampler (infer/sampler.sample), traced inside one jit on the trainer's mesh, with
           the key fold_in(fold_in(key(train.seed), 1), step): reproducible from (seed,
           step), so a resumed run samples what the uninterrupted one did
  row      prompt + sample as one sequence (inputs, targets = the samples, positions from
           the prompt's first real token, padding in segment 0), padded to data.seq_len;
           weight 1 on the positions that predict a sample, up to and including the row's
           first EOS, 0 after it (and on the prompt)
  loss     w_kd(t) x the full-vocabulary divergence `kind` between teacher and student at
           every weighted position (losses.on_policy_sums); the rows are data by then, so no
           gradient reaches the sampling (a separate jit, its output an input of the step)
The other rows keep CE + KD on data; `fraction=0` never calls any of this, so it is KD as
before, bitwise.

Evaluation (`new_tokens` > 0 and a teacher that runs): the student samples from the first
`eval_batches` fixed eval batches' prompts, with a fixed key, and the teacher grades the
samples: eval/on_policy_kl (per-token KL(student || teacher), full vocabulary) and
eval/sample_teacher_nll (-log p_teacher of the sampled tokens), both per sampled token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from guide_jax import losses, sharding
from guide_jax.data import packing
from guide_jax.infer import sampler as sampler_lib
from guide_jax.train import steps

TRAIN_STREAM, EVAL_STREAM = 1, 2  # fold_in tags: training's keys and evaluation's never meet
EVAL_SEED = 0                     # one fixed key for every evaluation, run and arm

EVAL_KL, EVAL_NLL = 'eval/on_policy_kl', 'eval/sample_teacher_nll'


def trains(cfg: ml_collections.ConfigDict) -> bool:
  """Whether some of each batch's rows are the student's samples."""
  return cfg.loss.on_policy.fraction > 0


def evaluates(cfg: ml_collections.ConfigDict) -> bool:
  """Whether evaluations sample from the student for the teacher to grade (implied by
  `trains`; config.validate_on_policy makes sure a teacher runs)."""
  return cfg.loss.on_policy.new_tokens > 0


def sampling(op: ml_collections.ConfigDict) -> sampler_lib.Sampling:
  return sampler_lib.Sampling(max_new_tokens=op.new_tokens, temperature=op.temperature,
                              top_p=op.top_p)


def rows_sampled(global_batch_size: int, fraction: float) -> int:
  """How many of a batch's rows the student writes (at least one when fraction > 0)."""
  return min(global_batch_size, max(1, round(fraction * global_batch_size)))


def prompts(batch: dict, prompt_len: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(tokens [b, P] left-padded, pad [b], usable [b]) from a packed batch's rows: each
  row's first segment (its first document piece), at most P tokens of it. A row that
  starts with padding (segment 0) is not usable; it gets one token to keep the sampler's
  shapes and no weight."""
  segments = batch['segment_ids'][:, :prompt_len]
  first = segments[:, :1]
  in_first = (segments == first).astype(jnp.int32)
  usable = first[:, 0] > 0
  length = jnp.where(usable, jnp.sum(jnp.cumprod(in_first, axis=1), axis=1), 1)  # contiguous
  pad = prompt_len - length
  cols = jnp.arange(prompt_len)[None, :]
  shifted = jnp.take_along_axis(batch['inputs'][:, :prompt_len],
                                jnp.clip(cols - pad[:, None], 0, prompt_len - 1), axis=1)
  tokens = jnp.where(cols >= pad[:, None], shifted, 0)
  return tokens, pad.astype(jnp.int32), usable


def rows(tokens: jax.Array, pad: jax.Array, usable: jax.Array, new: jax.Array, eos_id: int,
         seq_len: int) -> dict[str, jax.Array]:
  """Training rows [b, seq_len] of the sequences prompt + sample (module docstring)."""
  b, p = tokens.shape
  n = new.shape[1]
  full = jnp.concatenate([tokens, new], axis=1)  # [b, P + N]
  length = p + n - 1                             # inputs and targets of one sequence
  cols = jnp.arange(length)[None, :]
  real = cols >= pad[:, None]
  # sample k is weighted unless an EOS came before it (the EOS itself is graded)
  alive = jnp.cumprod(jnp.concatenate([jnp.ones((b, 1), jnp.int32),
                                       (new[:, :-1] != eos_id).astype(jnp.int32)], axis=1),
                      axis=1)
  weights = jnp.concatenate([jnp.zeros((b, p - 1), jnp.float32),
                             alive.astype(jnp.float32)], axis=1) * usable[:, None]
  out = {'inputs': full[:, :-1], 'targets': full[:, 1:],
         'segment_ids': real.astype(jnp.int32),
         'positions': jnp.maximum(cols - pad[:, None], 0).astype(jnp.int32),
         'loss_weights': weights}
  out = {k: jnp.pad(v, ((0, 0), (0, seq_len - length))).astype(v.dtype)
         for k, v in out.items()}
  out[losses.ON_POLICY] = jnp.ones((b, seq_len), jnp.float32)
  return out


def sampled_rows(model_cfg, op, eos_id: int, seq_len: int, params: dict, batch: dict,
                 key: jax.Array) -> dict[str, jax.Array]:
  """The student's rows for every row of `batch`: prompts, samples, rows. Traced."""
  tokens, pad, usable = prompts(batch, op.prompt_len)
  new = sampler_lib.sample(model_cfg, jax.lax.stop_gradient(params), tokens, pad, key,
                           eos_id, sampling(op))
  return rows(tokens, pad, usable, new, eos_id, seq_len)


def make_sample_step(cfg: ml_collections.ConfigDict, eos_id: int):
  """(params, batch, step) -> the batch with its first rows_sampled rows replaced by the
  student's (and an ON_POLICY field marking them): the train step's input."""
  op, seq_len = cfg.loss.on_policy, cfg.data.seq_len
  n = rows_sampled(cfg.data.global_batch_size, op.fraction)
  root = jax.random.fold_in(jax.random.key(cfg.train.seed), TRAIN_STREAM)

  def sample_step(params, batch, step):
    head = {k: batch[k][:n] for k in packing.FIELDS}
    own = sampled_rows(cfg.model, op, eos_id, seq_len, params, head,
                       jax.random.fold_in(root, step))
    mixed = {k: jnp.concatenate([own[k], batch[k][n:]]) for k in packing.FIELDS}
    mixed[losses.ON_POLICY] = jnp.concatenate(
        [own[losses.ON_POLICY], jnp.zeros_like(batch['loss_weights'][n:])])
    return {k: sharding.constrain(v, ('act_batch', 'act_length')) for k, v in mixed.items()}

  return sample_step


def make_eval_step(cfg: ml_collections.ConfigDict, teacher_cfg: ml_collections.ConfigDict,
                   eos_id: int, chunk_len: int):
  """(params, batch, teacher_params) -> sums of the student's samples from the batch's
  prompts, graded by the teacher, with the fixed evaluation key: the distillation objective
  (steps.distill_objective) on rows that are all on-policy, with a KD weight so that it runs
  the teacher whatever the run's own weights (a baseline's are 0)."""
  op, seq_len = cfg.loss.on_policy, cfg.data.seq_len
  key = jax.random.fold_in(jax.random.key(EVAL_SEED), EVAL_STREAM)
  grading = cfg.loss.copy_and_resolve_references()
  grading.kd, grading.match = losses.weight_config(1.0), losses.weight_config(0.0)
  objective = steps.distill_objective(cfg.model, teacher_cfg, losses.DistillLoss(grading, 1),
                                      None, chunk_len)

  def eval_step(params, batch, teacher_params):
    own = sampled_rows(cfg.model, op, eos_id, seq_len, params, batch, key)
    return objective(params, own, jnp.zeros((), jnp.int32), teacher_params, {})[1]

  return eval_step


def evaluate(eval_step, params, eval_batches: list, teacher_params, op, mesh,
             rules) -> dict[str, float]:
  """eval/on_policy_kl and eval/sample_teacher_nll over the first op.eval_batches fixed
  eval batches' prompts, per sampled token."""
  total: dict[str, float] = {}
  for local in eval_batches[:op.eval_batches]:
    batch = sharding.global_batch_from_local({k: local[k] for k in packing.FIELDS}, mesh,
                                             rules)
    for k, v in jax.device_get(eval_step(params, batch, teacher_params)).items():
      total[k] = total.get(k, 0.0) + float(v)
  w = max(total['on_policy_weight'], 1.0)
  return {EVAL_KL: total['on_policy_kl'] / w, EVAL_NLL: total['on_policy_teacher_nll'] / w}
