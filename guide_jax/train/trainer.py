"""The trainer: a numbered recipe, read top to bottom, inside one mesh context.

  1. validate the config (+ machine) 6. restore the latest checkpoint, if any
  2. processes and the device mesh  7. compile the train and eval steps
  3. data                           8. train: log, evaluate, checkpoint, honour SIGTERM
  4. model parameters, sharded      9. final evaluation and checkpoint
  5. optimizer (student only)

`train(config, workdir)` returns the final metrics. A workdir with a checkpoint resumes
from it; SIGTERM (what a TPU preemption sends) saves a checkpoint and returns cleanly.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from guide_jax import config as config_lib
from guide_jax import guide, losses, paths, sharding
from guide_jax.data import packing, pipeline
from guide_jax.data import tokenizer as tokenizer_lib
from guide_jax.models import transformer
from guide_jax.train import (checkpointing, flops, nonfinite, on_policy, optimizer, preflight,
                             steps, teacher_cache)
from guide_jax.train import teacher as teacher_lib
from guide_jax.train import metrics as metrics_lib

ConfigError = config_lib.ConfigError


class _StopSignal:
  """Set by SIGTERM (a preemption notice); checked once per step."""

  def __init__(self):
    self.event = threading.Event()
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self.event.set())
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@contextlib.contextmanager
def _closing_on_divergence(ckpt, writer):
  """On NonFiniteError: wait for the checkpoints already being written (all from before
  the divergence), close the metrics, and let the error through. Nothing more is saved."""
  try:
    yield
  except nonfinite.NonFiniteError:
    ckpt.close()
    writer.close()
    raise


def _reduce(sums: dict[str, float], prefix: str) -> dict[str, float]:
  """Weighted sums -> per-token means named `prefix/...`: data tokens' terms per data
  token, on-policy terms per sampled token, MATCH (per step) per token of either."""
  out = {}
  if 'on_policy_weight' in sums:  # a batch with on-policy rows (train/on_policy.py)
    w = max(sums['on_policy_weight'], 1.0)
    out[f'{prefix}/on_policy_kl'] = sums['on_policy_kl'] / w
    out[f'{prefix}/sample_teacher_nll'] = sums['on_policy_teacher_nll'] / w
    if 'match' in sums:
      out[f'{prefix}/match'] = sums['match'] / max(sums['weight'] + sums['on_policy_weight'],
                                                   1.0)
    if not sums['weight']:  # every row on-policy: no data token to report on
      return out
  w = max(sums['weight'], 1.0)
  out.update({f'{prefix}/ce': sums['ce'] / w, f'{prefix}/accuracy': sums['correct'] / w})
  for name in ('z', 'kd', 'teacher_ce', 'agreement', 'match'):
    if name in sums and f'{prefix}/{name}' not in out:
      out[f'{prefix}/{"z_loss" if name == "z" else name}'] = sums[name] / w
  return out


def eval_coverage_line(coverage: dict[str, int], data_cfg) -> str:
  """What one evaluation reads, for the log: rows, tokens and documents of the split."""
  split = data_cfg.eval_split if data_cfg.backend != 'seqio' else data_cfg.seqio_eval_split
  line = f'evaluation: {coverage["rows"]:,} rows, {coverage["tokens"]:,} tokens'
  if 'split_documents' in coverage:
    line += (f' spread over {coverage["documents"]:,} of the {coverage["split_documents"]:,} '
             f'documents ({coverage["split_tokens"]:,} tokens) of the {split} split')
  elif data_cfg.backend == 'seqio':
    line += f': the first rows of the {split} split'
  return line


def evaluate(eval_fn, params, eval_batches, mesh, rules, extra=()) -> dict[str, float]:
  """Eval loss (CE) in nats/token over the fixed eval batches, and perplexity."""
  total: dict[str, float] = {}
  for local in eval_batches:
    batch = sharding.global_batch_from_local(local, mesh, rules)
    sums = jax.device_get(eval_fn(params, batch, *extra))
    for k, v in sums.items():
      total[k] = total.get(k, 0.0) + float(v)
  out = _reduce(total, 'eval')
  out[metrics_lib.EVAL_LOSS] = out.pop('eval/ce')
  if total.get('bytes'):  # tokenizer-independent: nats summed over tokens / (ln 2 * bytes)
    out[metrics_lib.EVAL_BPB] = total['ce'] / (math.log(2) * total['bytes'])
  out[metrics_lib.EVAL_PPL] = math.exp(min(out[metrics_lib.EVAL_LOSS], 50.0))
  return out


def param_table(params: dict) -> str:
  """Start-up table of parameter counts per top-level group."""
  rows = []
  for name, sub in params.items():
    if isinstance(sub, dict) and name == 'blocks':
      for inner, leaves in sub.items():
        rows.append((f'blocks.{inner}', transformer.count_params(leaves)))
    else:
      rows.append((name, transformer.count_params(sub)))
  total = transformer.count_params(params)
  width = max(len(r[0]) for r in rows + [('total', 0)])
  lines = [f'{n:<{width}}  {c:>14,d}' for n, c in rows]
  lines.append(f'{"total":<{width}}  {total:>14,d}')
  return '\n'.join(lines)


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
          interrupt_at_step: int | None = None) -> dict[str, Any]:
  """Run (or resume) training. `interrupt_at_step` simulates a preemption (tests)."""
  workdir = paths.workdir_path(workdir)  # a local folder or gs://
  cfg = ml_collections.ConfigDict(config.to_dict())  # never mutate the caller's config
  distill = teacher_lib.is_distillation(cfg)
  cached = bool(cfg.teacher.logits_dir)  # KD from a teacher-logits cache: no teacher runs
  load_teacher = distill and teacher_lib.needs_params(cfg)

  # 1. Validate before touching anything: processes and devices first, so the mesh
  #    check sees the real device count; then this machine (remote paths reachable),
  #    the student-teacher pair, and memory. Only then is a teacher to pretrain trained.
  sharding.maybe_initialize_distributed(cfg.distributed)
  config_lib.validate(cfg, jax.device_count(), jax.process_count(), jax.default_backend(),
                      sharding.num_slices(jax.devices()))
  preflight.check_remote_paths(cfg, workdir)
  preflight.check_workdir(workdir)
  if distill:
    if cfg.teacher.pretrain:
      config_lib.validate(cfg.teacher.pretrain, jax.device_count(), jax.process_count(),
                          jax.default_backend(), sharding.num_slices(jax.devices()))
    try:
      losses.DistillLoss(cfg.loss, cfg.train.steps)
    except ValueError as e:
      raise ConfigError(str(e)) from None
    # The pair is checked against the teacher's architecture before a teacher is trained.
    teacher_model = teacher_lib.model_config(cfg)
    teacher_lib.running_model(cfg, teacher_model, jax.default_backend())
    try:
      guide.check_compatible(teacher_model, cfg.model, cfg.guide)
    except guide.GuideError as e:
      raise ConfigError(str(e)) from None
  preflight.check_memory(cfg, teacher_model if load_teacher else None)
  if load_teacher:
    teacher_dir = teacher_lib.ensure_trained(cfg, workdir, train)

  # 2. Mesh; everything below runs inside it with the config's logical-axis rules.
  mesh = sharding.make_mesh(cfg.mesh)
  rules = tuple(cfg.logical_rules)
  with jax.set_mesh(mesh), sharding.use_rules(rules):

    # 3. Teacher (frozen, own shardings) and data (a bad corpus is a config error).
    #    With a logits cache the teacher is loaded only if GUIDE projects it; the cache
    #    must have been made from it, for this data order (one line otherwise).
    teacher = cache = None
    if load_teacher:
      teacher = teacher_lib.load(teacher_dir, mesh, rules, cfg.teacher.dtype,
                                 cfg.teacher.attention_kernel)
    elif cached:
      teacher = teacher_lib.from_cache(cfg, teacher_model)
    if distill:
      teacher_lib.check_vocabulary(cfg, teacher)
      teacher_lib.check_sequence(cfg, teacher)
    if cached:
      cache = teacher_cache.open_for_run(
          cfg, teacher.model, teacher_cache.param_norms(teacher.params) if load_teacher
          else None, teacher_cache.vocab_fingerprint(cfg))
    try:
      data = pipeline.build(cfg, progress=cfg.train.progress_bar and jax.process_index() == 0)
    except (ValueError, FileNotFoundError) as e:
      raise ConfigError(str(e)) from None
    if cache is not None:  # eval batches with the teacher's cached top-k, when it has them
      data.eval_batches = cache.with_eval(cfg, data.eval_batches)

    # 4. Student parameters, created directly sharded by jit's out_shardings.
    model_cfg = cfg.model
    abstract_params, param_shardings = transformer.abstract_params_and_shardings(
        model_cfg, mesh, rules)

    # 5. Optimizer over the student's parameters only.
    tx = optimizer.make(cfg.train)
    shardings = steps.state_shardings(param_shardings, tx, abstract_params, mesh)

    def _init_state(key):
      return steps.new_state(transformer.init_params(model_cfg, key), tx)

    init_state = jax.jit(_init_state, out_shardings=shardings)

    # 4b. GUIDE: theta_hat = project(teacher) under jit, placed like the student's leaves;
    #     recomputed at every (re)start (deterministic), never checkpointed.
    theta_hat, guide_log, layers = {}, {}, None
    if load_teacher:
      theta_hat, layers, diagnostics = guide.projected_teacher(
          teacher.params, teacher.model, model_cfg, cfg.guide, param_shardings,
          teacher.vocab_rows)
      guide_log = {'guide/explained_variance': float(diagnostics['explained_variance'])}
    if cached and load_teacher:  # projected: from here on the teacher is its cache
      guide_log.update(_teacher_evals(cfg, teacher, diagnostics['projection'], data, mesh,
                                      rules))
      teacher = teacher_lib.without_params(teacher)

    # 6. Restore the newest checkpoint (the local tier's when it is newer and reads back),
    #    or start fresh (from GUIDE when asked).
    ckpt = checkpointing.RunCheckpoints(workdir, cfg.train)
    meta = {'config': json.loads(cfg.to_json()), 'model': json.loads(model_cfg.to_json()),
            'vocab_path': data.vocab_path, 'vocab_size': data.vocab_size,
            'teacher': str(teacher.workdir) if teacher else '', 'workdir': str(workdir)}
    found = ckpt.latest(meta)
    if found is not None:
      tier, latest = found
      _check_same_model(tier.restore_meta(latest), meta, tier.directory / str(latest))
      abstract_state = sharding.abstract(jax.eval_shape(_init_state, jax.random.key(0)),
                                         shardings)
      started = time.perf_counter()
      tier, latest, state, data_state = ckpt.restore(found, abstract_state)
      jax.block_until_ready(state)
      data.train.set_state(data_state)
      restored_from = f'{tier.directory}/{latest} in {time.perf_counter() - started:.2f} s'
    else:
      state = init_state(jax.random.key(cfg.train.seed))
      if theta_hat:
        state['params'] = jax.jit(lambda p, g: guide.apply(p, g, layers),
                                  out_shardings=param_shardings)(state['params'], theta_hat)
    start_step = int(jax.device_get(state['step']))

    # 7. Compile: explicit shardings, the state donated so params update in place; the
    #    teacher and theta_hat are inputs, never outputs (no gradient, no optimizer state).
    chunk_len = losses.resolve_chunk_len(cfg.loss.chunk_len, cfg.data.seq_len)
    batch_fields = (packing.FIELDS + (losses.CACHED_TEACHER_FIELDS if cached else ()) +
                    ((losses.ON_POLICY,) if on_policy.trains(cfg) else ()))
    batch_shardings = {k: sharding.batch_sharding(mesh, rules) for k in batch_fields}
    if distill:
      loss = losses.DistillLoss(cfg.loss, cfg.train.steps, cfg.train.z_loss)
      objective = steps.distill_objective(model_cfg, None if cached else teacher.model, loss,
                                          layers, chunk_len)
      extra, extra_shardings = (teacher.params, theta_hat), (teacher.shardings,
                                                             sharding.like(theta_hat, param_shardings))
    else:
      objective = steps.lm_objective(model_cfg, cfg.train.z_loss, chunk_len)
      extra, extra_shardings = (), ()
    train_step = steps.jit_train_step(objective, tx, cfg.train, shardings,
                                (batch_shardings, *extra_shardings))
    eval_batch_shardings = {k: sharding.batch_sharding(mesh, rules)  # + target_bytes
                            for k in data.eval_batches[0]}
    eval_step = jax.jit(steps.make_eval_step(objective),
                        in_shardings=(param_shardings, eval_batch_shardings, *extra_shardings))

    # 7b. On-policy distillation (train/on_policy.py): the student's rows are sampled in a
    #     jit of their own before each step (its output is the step's input, so no gradient
    #     reaches the sampling), and evaluations grade the student's samples.
    sample_step = on_policy_eval = None
    if on_policy.evaluates(cfg):
      eos_id = tokenizer_lib.load(data.vocab_path).eos_id if data.vocab_path else -1
      data_shardings = {k: batch_shardings[k] for k in packing.FIELDS}
      on_policy_eval = jax.jit(on_policy.make_eval_step(cfg, teacher.model, eos_id, chunk_len),
                               in_shardings=(param_shardings, data_shardings,
                                             teacher.shardings))
      if on_policy.trains(cfg):
        sample_step = jax.jit(on_policy.make_sample_step(cfg, eos_id),
                              in_shardings=(param_shardings, data_shardings,
                                            sharding.replicated(mesh)),
                              out_shardings=batch_shardings)
        # Before loss.on_policy.start_step: KD on data, the batches as they come (compiled
        # only if called, so only by a run that starts before it).
        data_step = steps.jit_train_step(objective, tx, cfg.train, shardings,
                                         (data_shardings, *extra_shardings))
    first_sampled = (cfg.loss.on_policy.start_step + 1 if sample_step is not None and
                     cfg.loss.on_policy.start_step > start_step else None)

    def evaluate_all(params) -> dict[str, float]:
      scores = evaluate(eval_step, params, data.eval_batches, mesh, rules, extra)
      if on_policy_eval is not None:
        scores.update(on_policy.evaluate(on_policy_eval, params, data.eval_batches,
                                         teacher.params, cfg.loss.on_policy, mesh, rules))
      return scores

    # 8. Train.
    writer = metrics_lib.MetricsWriter(workdir, cfg.train.steps, start_step,
                                       cfg.train.progress_bar)
    tokens_per_step = cfg.data.global_batch_size * cfg.data.seq_len
    peak, peak_source = flops.device_peak_flops(model_cfg.dtype, cfg.train.peak_flops)
    perf = metrics_lib.PerfMeter(
        tokens_per_step,
        flops.train_flops_per_token(model_cfg, cfg.data.seq_len) * tokens_per_step,
        (flops.forward_flops_per_token(teacher.model, cfg.data.seq_len) * tokens_per_step
         if distill and loss.uses_kd and not cached else 0.0), peak, jax.device_count())
    if start_step == 0:
      writer.print(param_table(state['params']))
    writer.print(f'mesh {dict(mesh.shape)}; peak {peak / 1e9:.1f} GFLOP/s per device '
                 f'({peak_source}); starting at step {start_step}' +
                 (f' (restored {restored_from})' if found is not None else ''))
    writer.print(eval_coverage_line(data.eval_coverage, cfg.data))
    if jax.process_index() == 0:
      (workdir / 'config.json').write_text(cfg.to_json(indent=2))
    if distill:
      if not cached:
        guide_log.update(_teacher_evals(cfg, teacher, diagnostics['projection'], data, mesh,
                                        rules))
      elif 'teacher/eval_loss' not in guide_log:  # measured when the cache was built
        guide_log.update(teacher_cache.teacher_eval(cache.manifest, cfg))
      writer.write(start_step, guide_log)
      writer.print('  '.join(f'{k} {v:.4f}' for k, v in guide_log.items()))

    last_eval: dict[str, float] = {}
    pending: list[dict] = []
    guard = nonfinite.Guard(cfg.train.on_nonfinite, cfg.train.max_skips_in_a_row)
    unchecked: list[tuple[int, jax.Array]] = []  # (step, its non-finite flag) not yet read

    def diverged() -> str | None:  # reads the flags: a small device->host sync
      flags = jax.device_get([flag for _, flag in unchecked])
      message = guard.check([(s, bool(f)) for (s, _), f in zip(unchecked, flags)])
      unchecked.clear()
      return message

    step = start_step
    interrupted = False
    if start_step == 0 and cfg.train.eval_at_start:
      last_eval = evaluate_all(state['params'])
      writer.write(0, {metrics_lib.TOKENS: 0, **last_eval})
    perf.restart()
    with _StopSignal() as stop, _closing_on_divergence(ckpt, writer):
      while step < cfg.train.steps:
        local = next(data.train)
        if cache is not None:  # the teacher's top-k for this step's rows
          local = {**local, **cache.read(step)}
        batch = sharding.global_batch_from_local(local, mesh, rules)
        step_fn = train_step
        if sample_step is not None and step < cfg.loss.on_policy.start_step:
          step_fn = data_step
        elif sample_step is not None:  # the student writes its rows with this step's params
          jax.block_until_ready(state['params'])  # time the sampling, not the step before
          started = time.perf_counter()
          batch = jax.block_until_ready(sample_step(state['params'], batch, state['step']))
          perf.sampled(time.perf_counter() - started)
        state, step_metrics = step_fn(state, batch, *extra)
        pending.append(step_metrics)
        step += 1
        unchecked.append((step, step_metrics['nonfinite']))
        perf.step()
        writer.advance()
        if step in (start_step + 1, first_sampled):  # compiled: keep out of step times
          jax.block_until_ready(state)
          which = 'first step' if step == start_step + 1 else 'first on-policy step'
          writer.print(f'{which} (compile + run) took {perf.seconds():.1f}s')
          perf.restart()

        logs = step % cfg.train.log_every == 0 or step == cfg.train.steps
        # Before a log and before a checkpoint: has any step since the last look diverged?
        why = diverged() if logs or ckpt.due(step) else None
        if logs or why:  # a run that ends here logs its last step, for the record
          host = jax.device_get(pending)  # one device->host sync per log interval
          last = host[-1]
          record = {metrics_lib.TOKENS: step * tokens_per_step,
                    metrics_lib.TRAIN_LOSS: float(last['loss']),
                    **_reduce({k: float(v) for k, v in last.items()}, 'train'),
                    'train/grad_norm': float(last['grad_norm']),
                    'train/learning_rate': float(last['learning_rate']),
                    'train/skipped_steps': guard.skipped, **perf.report()}
          writer.write(step, record)
          pending = []
        if why:
          raise nonfinite.NonFiniteError(why)

        if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
          last_eval = evaluate_all(state['params'])
          writer.write(step, {metrics_lib.TOKENS: step * tokens_per_step, **last_eval})
          perf.restart()  # eval time is not train step time

        if ckpt.due(step):
          ckpt.save(step, state, data.train.get_state(), meta)
        if stop.event.is_set() or step == interrupt_at_step:
          interrupted = True
          break

      why = diverged()  # preempted between checks: look before the final checkpoint
      if why:
        raise nonfinite.NonFiniteError(why)

    if not last_eval and not interrupted:  # resumed a finished run: still report its eval
      last_eval = evaluate_all(state['params'])

    # 9. Final checkpoint: at the end, and when preempted between intervals.
    ckpt.save(step, state, data.train.get_state(), meta, final=True)
    ckpt.close()
    writer.print(f'{"preempted" if interrupted else "finished"} at step {step}; checkpoint '
                 f'in {ckpt.directory}')
    writer.close()
    return {'step': step, 'interrupted': interrupted, **guide_log, **last_eval,
            **{f'eval_coverage_{k}': v for k, v in data.eval_coverage.items()},
            'params': state['params'],
            'teacher_params': teacher.params if teacher and not cached else None}


def _teacher_evals(cfg, teacher, m, data, mesh, rules) -> dict[str, float]:
  """Eval loss of the teacher, and (guide.approx_teacher_eval) of the teacher with E_T and
  P_T replaced by their PCA reconstructions E M M^T: what the compression alone costs."""
  chunk_len = losses.resolve_chunk_len(cfg.loss.chunk_len, cfg.data.seq_len)
  teacher_eval = jax.jit(steps.make_eval_step(steps.lm_objective(teacher.model, 0.0, chunk_len)),
                         in_shardings=(teacher.shardings, None))
  scores = evaluate(teacher_eval, teacher.params, data.eval_batches, mesh, rules)
  out = {'teacher/eval_loss': scores[metrics_lib.EVAL_LOSS]}
  if metrics_lib.EVAL_BPB in scores:
    out['teacher/eval_bits_per_byte'] = scores[metrics_lib.EVAL_BPB]
  if cfg.guide.approx_teacher_eval:
    def reconstruct(p):
      p = dict(p)
      for key in ('embedding', 'pos_embedding'):
        if key in p:
          p[key] = (p[key].astype(jnp.float32) @ m @ m.T).astype(p[key].dtype)
      return p
    approx = jax.jit(reconstruct, out_shardings=teacher.shardings)(teacher.params)
    out['teacher/approx_eval_loss'] = evaluate(teacher_eval, approx, data.eval_batches, mesh,
                                               rules)[metrics_lib.EVAL_LOSS]
  return out


def _check_same_model(saved: dict, current: dict, where: epath.Path) -> None:
  """Refuse to resume a checkpoint of another model or vocabulary (nothing is overwritten)."""
  stored = config_lib.complete_model(saved['model'])  # fields added since at their defaults
  for key, value in current['model'].items():
    if key not in config_lib.EXECUTION_FIELDS and stored.get(key) != value:
      raise ConfigError(f'model.{key}={value!r} but the checkpoint {where} was written with '
                        f'{stored.get(key)!r}; use a new --workdir or restore that value')
  if saved.get('vocab_size') != current['vocab_size']:
    raise ConfigError(f'vocabulary size {current["vocab_size"]} differs from the checkpoint '
                      f'{where} ({saved.get("vocab_size")}); use a new --workdir')
