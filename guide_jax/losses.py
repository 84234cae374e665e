"""Token-level losses as (sum, weight) pairs, in float32.

Every loss returns sums over tokens weighted by the batch's loss_weights, never means: a
step divides by the global weight once, so gradient accumulation, padding and the number
of hosts cannot bias the average.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

from guide_jax import sharding
from guide_jax.models import attention


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


# --- knowledge distillation ---------------------------------------------------------------

KD_KINDS = ('forward_kl', 'reverse_kl', 'jsd')


def kd_per_token(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float,
                 kind: str = 'forward_kl', beta: float = 0.5) -> jax.Array:
  """tau^2 * divergence(teacher || student) per token, in float32.

  forward_kl: KL(p_T || p_S); reverse_kl: KL(p_S || p_T); jsd: generalized JSD with
  mixture m = beta p_T + (1 - beta) p_S: beta KL(p_T || m) + (1 - beta) KL(p_S || m).
  """
  dtype = jnp.promote_types(student_logits.dtype, jnp.float32)  # at least float32
  log_s = jax.nn.log_softmax(student_logits.astype(dtype) / temperature, axis=-1)
  log_t = jax.nn.log_softmax(teacher_logits.astype(dtype) / temperature, axis=-1)
  return temperature ** 2 * divergence(log_t, log_s, kind, beta)


def divergence(log_t: jax.Array, log_s: jax.Array, kind: str, beta: float) -> jax.Array:
  """The KD divergence between two distributions given as log-probabilities over the last
  axis (the vocabulary, or cached top-k tokens plus a rest bucket)."""
  kl = lambda log_p, log_q: jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  if kind == 'forward_kl':
    return kl(log_t, log_s)
  if kind == 'reverse_kl':
    return kl(log_s, log_t)
  if kind == 'jsd':
    log_m = jnp.logaddexp(jnp.log(beta) + log_t, jnp.log1p(-beta) + log_s)
    return beta * kl(log_t, log_m) + (1 - beta) * kl(log_s, log_m)
  raise ValueError(f'loss.kd_kind={kind!r} must be one of {KD_KINDS}')


# --- on-policy distillation: the student's own samples, graded by the teacher ------------


def on_policy_sums(student_logits: jax.Array, teacher_logits: jax.Array, targets: jax.Array,
                   weights: jax.Array, kind: str, beta: float) -> dict[str, jax.Array]:
  """Weighted sums over sampled positions (train/on_policy.py builds the rows: `targets`
  are the student's samples, `weights` 1 up to and including a row's first EOS):
    on_policy_loss         divergence `kind` (beta for jsd) between the two full
                           distributions at temperature 1: what the student minimises
    on_policy_kl           KL(p_S || p_T), per-token reverse KL, whatever `kind` trains
    on_policy_teacher_nll  -log p_T(sample): how likely the teacher finds the samples
    on_policy_weight       the sampled positions counted
  The samples are data here: nothing differentiates through how they were drawn."""
  log_s = jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1)
  log_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
  reverse = divergence(log_t, log_s, 'reverse_kl', beta)
  loss = reverse if kind == 'reverse_kl' else divergence(log_t, log_s, kind, beta)
  nll = -jnp.take_along_axis(log_t, targets[..., None], axis=-1)[..., 0]
  return {'on_policy_loss': jnp.sum(loss * weights), 'on_policy_kl': jnp.sum(reverse * weights),
          'on_policy_teacher_nll': jnp.sum(nll * weights),
          'on_policy_weight': jnp.sum(weights)}


def on_policy_config() -> ml_collections.ConfigDict:
  """loss.on_policy: the share of each batch whose continuation the student samples
  (train/on_policy.py). Off (fraction 0, new_tokens 0) by default."""
  c = ml_collections.ConfigDict()
  c.fraction = 0.0        # share of each batch's rows made on-policy; 0 = KD on data only
  c.prompt_len = 0        # a row's first document's first prompt_len tokens prompt it
  c.new_tokens = 0        # tokens the student samples after the prompt (> 0: also evaluated)
  c.temperature = 1.0     # sampling temperature (0: greedy); the loss is at temperature 1
  c.top_p = 1.0           # nucleus sampling (1.0: off)
  c.kind = 'reverse_kl'   # 'reverse_kl', 'forward_kl' or 'jsd' per sampled token
  c.beta = 0.5            # jsd: the teacher's weight in the mixture
  c.eval_batches = 4      # eval/on_policy_kl samples from the first N fixed eval batches
  c.start_step = 0        # steps of KD on data only before the first on-policy rows
  return c


# --- KD from a cached teacher: its top-k logits and what lies outside them ------------------

# Per-position fields of a batch read from a teacher-logits cache (train/teacher_cache.py).
# All logits are relative to the teacher's top-1 logit (softmax does not see the shift).
CACHED_TEACHER_FIELDS = (
    'teacher_logits',        # [..., k] the k largest logits, descending
    'teacher_ids',           # [..., k] their token ids
    'teacher_lse',           # [...]    log-sum-exp over the whole vocabulary (temperature 1)
    'teacher_rest',          # [...]    log-sum-exp of logits / tau over the tokens outside
                             #          the top-k, tau = the cache's temperature (-inf: k = V)
    'teacher_target_logit',  # [...]    the logit of the target token (in the top-k or not)
)


def cached_teacher(batch: dict) -> dict | None:
  """The cached teacher fields of a batch, or None (eval batches carry none)."""
  if CACHED_TEACHER_FIELDS[0] not in batch:
    return None
  return {k: batch[k] for k in CACHED_TEACHER_FIELDS}


def sparse_kd_per_token(student_logits: jax.Array, teacher: dict, temperature: float,
                        kind: str = 'forward_kl', beta: float = 0.5) -> jax.Array:
  """tau^2 * divergence per token between teacher and student over k + 1 outcomes: the
  teacher's top-k tokens, and one "rest" bucket holding every other token.

  The teacher's side is exact, not renormalised: p_T(i) = exp(z_i / tau - log Z_T) with
  log Z_T = logaddexp(LSE(top-k / tau), rest), and p_T(rest) = exp(rest - log Z_T), where
  `rest` was computed over the tokens outside the top-k when the cache was built (at the
  cache's temperature, which the run must use). The student's side is its full softmax
  summed the same way. So the loss is the divergence of the two distributions coarsened to
  k + 1 outcomes: equal to full-vocabulary KD when k = V, and otherwise a lower bound of it
  (log-sum inequality) that misses only how the two spread the rest bucket's mass.
  """
  k = teacher['teacher_ids'].shape[-1]
  log_s_all = student_logits.astype(jnp.float32) / temperature
  student_lse = jax.nn.logsumexp(log_s_all, axis=-1, keepdims=True)
  ids = teacher['teacher_ids'].astype(jnp.int32)
  log_s = jnp.take_along_axis(log_s_all, ids, axis=-1) - student_lse
  top = teacher['teacher_logits'].astype(jnp.float32) / temperature
  if k < student_logits.shape[-1]:
    rest_t = teacher['teacher_rest'].astype(jnp.float32)[..., None]
    log_z = jnp.logaddexp(jax.nn.logsumexp(top, axis=-1, keepdims=True), rest_t)
    in_top = jnp.put_along_axis(jnp.zeros(log_s_all.shape, bool), ids, True, axis=-1,
                                inplace=False)
    rest_s = jax.nn.logsumexp(jnp.where(in_top, -jnp.inf, log_s_all), axis=-1,
                              keepdims=True)
    log_t = jnp.concatenate([top - log_z, rest_t - log_z], axis=-1)
    log_s = jnp.concatenate([log_s, rest_s - student_lse], axis=-1)
  else:  # the top-k is the whole vocabulary: no rest bucket
    log_t = top - jax.nn.logsumexp(top, axis=-1, keepdims=True)
  return temperature ** 2 * divergence(log_t, log_s, kind, beta)


def weight_schedule(cfg, total_steps: int) -> optax.Schedule:
  """A loss weight over training steps: constant, linear, cosine or step.

  Fields: kind, value (at step 0), end_value, steps (transition length; 0 = total_steps).
  linear/cosine go from value to end_value over `steps`; step jumps there at `steps`.
  """
  steps = int(cfg.steps) or total_steps
  start, end = float(cfg.value), float(cfg.end_value)
  if cfg.kind == 'constant':
    return optax.constant_schedule(start)
  if cfg.kind == 'linear':
    return optax.linear_schedule(start, end, steps)
  if cfg.kind == 'cosine':
    return lambda t: end + (start - end) * 0.5 * (
        1 + jnp.cos(jnp.pi * jnp.minimum(t / steps, 1.0)))
  if cfg.kind == 'step':
    return optax.join_schedules([optax.constant_schedule(start), optax.constant_schedule(end)],
                                [steps])
  raise ValueError(f"schedule kind {cfg.kind!r} must be constant, linear, cosine or step")


def weight_config(value: float, kind: str = 'constant', end_value: float = 0.0,
                  steps: int = 0) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(kind=kind, value=value, end_value=end_value,
                                        steps=steps))


def loss_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.ce = weight_config(1.0)         # w_ce(t)
  c.kd = weight_config(0.0)         # w_kd(t); 0 everywhere = no teacher forward pass
  c.match = weight_config(0.0)      # w_match(t): relative L2 to the projected teacher
  c.kd_kind = 'forward_kl'          # 'forward_kl', 'reverse_kl' or 'jsd'
  c.temperature = 1.0               # tau (KD is scaled by tau^2)
  c.jsd_beta = 0.5                  # mixture weight of the teacher in jsd
  # Fused output layer + losses: the [B, S, V] logits of student and teacher are computed
  # chunk_len sequence positions at a time (and again in the backward), never whole.
  # -1 = auto (256 when data.seq_len is a larger multiple of it), 0 = off, N = N positions.
  c.chunk_len = -1
  c.on_policy = on_policy_config()
  return c


AUTO_CHUNK_LEN = 256


def resolve_chunk_len(chunk_len: int, seq_len: int) -> int:
  """The positions per output-layer chunk for `loss.chunk_len` (0: unfused)."""
  if chunk_len == -1:
    return AUTO_CHUNK_LEN if seq_len > AUTO_CHUNK_LEN and seq_len % AUTO_CHUNK_LEN == 0 else 0
  return 0 if chunk_len >= seq_len else chunk_len


def output_logits(h: jax.Array, w: jax.Array, dtype, cap: float = 0.0) -> jax.Array:
  """Logits [B, S, V] in float32 from final-normed hidden states and an output kernel,
  soft-capped at `cap` (the model's final_logit_softcap) as the model's own output is."""
  z = jnp.einsum('bcd,dv->bcv', h.astype(dtype), w.astype(dtype),
                 preferred_element_type=jnp.float32)
  z = attention.softcap(z, cap)
  return sharding.constrain(z, ('act_batch', 'act_length', 'act_vocab'))


def chunked_output_sums(per_chunk, h_student, w_student, targets, weights, chunk_len: int,
                        dtype, teacher=None, teacher_chunk=None,
                        cap: float = 0.0) -> tuple[jax.Array, dict]:
  """`per_chunk(student_logits, teacher, targets, weights) -> (loss, sums)` summed over
  chunks of `chunk_len` sequence positions, the logits never whole.

  h_student: final-normed hidden states [B, S, d]; w_student: the output kernel [d, V];
  cap: the student's final_logit_softcap.
  teacher: None, or a tree of per-position arrays [B, S, ...] that `teacher_chunk` turns,
  chunk by chunk, into per_chunk's teacher argument (online: the teacher's hidden states
  into its logits; cached: the cached top-k as they are). A lax.scan over
  chunks of the sequence axis (the batch axis keeps its sharding, the vocabulary its own),
  so memory holds one chunk's [B, chunk, V] at a time. Differentiated, the same scan
  computes each chunk's gradients for h_student and w_student in the forward, while its
  logits are at hand (a custom_vjp, as Liger's fused linear cross-entropy does): the
  backward only scales them by the loss's cotangent, so no logits are recomputed and the
  output layer costs the unfused path's three matmuls (a checkpointed chunk costs four,
  +9-10% on the d 256 CPU step). Gradients are those of the unfused computation (only the
  summation order differs). Only the loss is differentiable: `sums` are metrics, and
  their cotangents (zero under value_and_grad's has_aux) are dropped.
  """
  b, s = targets.shape
  n = s // chunk_len

  def split(x):
    return None if x is None else x.reshape(b, n, chunk_len, *x.shape[2:]).swapaxes(0, 1)

  def chunk_sums(hs, ws, t, tg, wt):
    t = None if t is None else jax.lax.stop_gradient(teacher_chunk(t))
    return per_chunk(output_logits(hs, ws, dtype, cap), t, tg, wt)

  rest = (jax.tree.map(split, teacher), split(targets), jax.tree.map(split, weights))

  def scan(body, init, hs):
    return jax.lax.scan(body, init, (split(hs),) + rest)

  def zero_sums(hs, ws):
    first = jax.tree.map(lambda x: x[0], (split(hs),) + rest)
    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                        jax.eval_shape(chunk_sums, first[0], ws, *first[1:]))

  @jax.custom_vjp
  def fused(hs, ws):
    def body(total, x):
      return jax.tree.map(jnp.add, total, chunk_sums(x[0], ws, *x[1:])), None
    return scan(body, zero_sums(hs, ws), hs)[0]

  def fused_fwd(hs, ws):
    grad = jax.value_and_grad(chunk_sums, argnums=(0, 1), has_aux=True)

    def body(carry, x):
      total, dw = carry
      sums, (dh, dw_chunk) = grad(x[0], ws, *x[1:])
      return (jax.tree.map(jnp.add, total, sums), dw + dw_chunk.astype(jnp.float32)), dh

    init = (zero_sums(hs, ws), jnp.zeros(ws.shape, jnp.float32))
    (total, dw), dh = scan(body, init, hs)
    dh = dh.swapaxes(0, 1).reshape(hs.shape)  # [n, B, chunk, d] -> [B, S, d]
    return total, (dh, dw)

  def fused_bwd(residuals, cotangent):
    dh, dw = residuals
    g = cotangent[0]  # the loss's; the metric sums' are dropped (see above)
    return (g * dh).astype(dh.dtype), (g * dw).astype(w_student.dtype)

  fused.defvjp(fused_fwd, fused_bwd)
  return fused(h_student, w_student)


class DistillLoss:
  """w_ce(t) CE + w_kd(t) KD + w_match(t) MATCH, validated on construction."""

  def __init__(self, cfg: ml_collections.ConfigDict, total_steps: int, z_loss: float = 0.0):
    if cfg.temperature <= 0:
      raise ValueError(f'loss.temperature={cfg.temperature} must be > 0')
    if cfg.kd_kind not in KD_KINDS:
      raise ValueError(f'loss.kd_kind={cfg.kd_kind!r} must be one of {KD_KINDS}')
    if not 0 < cfg.jsd_beta < 1:
      raise ValueError(f'loss.jsd_beta={cfg.jsd_beta} must be in (0, 1)')
    for name in ('ce', 'kd', 'match'):
      w = cfg[name]
      if w.value < 0 or w.end_value < 0:
        raise ValueError(f'loss.{name}.value/end_value must be >= 0, got {w.value}/{w.end_value}')
      if w.kind not in ('constant', 'linear', 'cosine', 'step'):
        raise ValueError(f'loss.{name}.kind={w.kind!r} must be constant, linear, cosine or step')
      if w.steps < 0:
        raise ValueError(f'loss.{name}.steps={w.steps} must be >= 0')
    self.cfg, self.z_loss = cfg, z_loss
    self.w_ce, self.w_kd, self.w_match = (weight_schedule(cfg[n], total_steps)
                                          for n in ('ce', 'kd', 'match'))
    uses = lambda w: w.value > 0 or (w.kind != 'constant' and w.end_value > 0)
    self.uses_kd, self.uses_match = uses(cfg.kd), uses(cfg.match)

  def logit_sums(self, step, student_logits, teacher, targets, weights):
    """(weighted loss sum, metric sums) of the logit terms (CE, z-loss, KD) of any set of
    tokens: a whole micro-batch, or one chunk of the fused output layer. `teacher` is the
    teacher's logits, its cached top-k (a dict, CACHED_TEACHER_FIELDS), or None.
    `weights` is one array, or (data weights, on-policy weights) when some rows hold the
    student's samples (`weighted`): those get w_kd(t) times the on-policy divergence and
    no CE, z-loss or KD on data."""
    on_policy = None
    if isinstance(weights, tuple):
      weights, on_policy = weights
    sums = cross_entropy_sums(student_logits, targets, weights)
    loss = self.w_ce(step) * sums['ce'] + self.z_loss * sums['z']
    if on_policy is not None:
      sums.update(on_policy_sums(student_logits, teacher, targets, on_policy,
                                 self.cfg.on_policy.kind, self.cfg.on_policy.beta))
      loss += self.w_kd(step) * sums['on_policy_loss']
    if teacher is None:
      return loss, sums
    kd_args = (self.cfg.temperature, self.cfg.kd_kind, self.cfg.jsd_beta)
    if isinstance(teacher, dict):  # cached: its CE and top-1 are exact, its KD sparse
      kd = sparse_kd_per_token(student_logits, teacher, *kd_args)
      teacher_ce = jnp.sum((teacher['teacher_lse'] - teacher['teacher_target_logit'])
                           * weights)
      teacher_top1 = teacher['teacher_ids'][..., 0]
    else:
      kd = kd_per_token(student_logits, teacher, *kd_args)
      teacher_ce = cross_entropy_sums(teacher, targets, weights)['ce']
      teacher_top1 = jnp.argmax(teacher, axis=-1)
    agree = jnp.argmax(student_logits, -1) == teacher_top1
    sums.update(kd=jnp.sum(kd * weights), teacher_ce=teacher_ce,
                agreement=jnp.sum(agree.astype(jnp.float32) * weights))
    return loss + self.w_kd(step) * sums['kd'], sums

  def sums(self, step, student_logits, batch, teacher=None, match=None):
    """(weighted loss sum, metric sums) for one (micro-)batch."""
    loss, sums = self.logit_sums(step, student_logits, teacher, batch['targets'],
                                 weighted(batch))
    return self.add_match(step, loss, sums, match)

  def fused_sums(self, step, h_student, w_student, batch, chunk_len, dtype, teacher=None,
                 teacher_chunk=None, match=None, cap: float = 0.0):
    """`sums` with the output layer fused into the loss (chunked_output_sums)."""
    loss, sums = chunked_output_sums(
        lambda zs, t, tg, wt: self.logit_sums(step, zs, t, tg, wt), h_student, w_student,
        batch['targets'], weighted(batch), chunk_len, dtype, teacher, teacher_chunk, cap)
    return self.add_match(step, loss, sums, match)

  def add_match(self, step, loss, sums, match):
    if match is not None:
      # MATCH is per step, not per token: weight it by this micro-batch's share of tokens
      # so that the step's division by the total weight leaves w_match * MATCH.
      share = sums['weight'] + sums['on_policy_weight'] if 'on_policy_weight' in sums \
          else sums['weight']
      sums['match'] = match * share
      loss += self.w_match(step) * match * share
    return loss, sums


ON_POLICY = 'on_policy'  # batch field [B, S]: 1.0 on the rows holding the student's samples


def weighted(batch: dict):
  """A batch's loss weights: one array, or (data weights, on-policy weights) when it has
  on-policy rows. Multiplying by exact 0/1 masks leaves the data rows' weights bitwise."""
  if ON_POLICY not in batch:
    return batch['loss_weights']
  mask = batch[ON_POLICY]
  return batch['loss_weights'] * (1.0 - mask), batch['loss_weights'] * mask
