"""The trainer: a numbered recipe, read top to bottom, inside one mesh context.

  1. validate the config            6. restore the latest checkpoint, if any
  2. processes and the device mesh  7. compile the train and eval steps
  3. data                           8. train: log, evaluate, checkpoint, honour SIGTERM
  4. model parameters, sharded      9. final evaluation and checkpoint
  5. optimizer (student only)

`train(config, workdir)` returns the final metrics. A workdir with a checkpoint resumes
from it; SIGTERM (what a TPU preemption sends) saves a checkpoint and returns cleanly.
"""

from __future__ import annotations

import json
import math
import pathlib
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from guide_jax import config as config_lib
from guide_jax import losses, sharding
from guide_jax.data import pipeline
from guide_jax.models import transformer
from guide_jax.train import checkpointing, flops, optimizer, steps
from guide_jax.train import metrics as metrics_lib
from guide_jax.train.checkpointing import CheckpointError

ConfigError = config_lib.ConfigError


def lm_objective(model_cfg: ml_collections.ConfigDict, z_loss: float) -> steps.Objective:
  """Next-token cross-entropy (+ z-loss): the pretraining objective."""

  def objective(params, batch, step):
    logits = transformer.apply(model_cfg, params, batch)
    sums = losses.cross_entropy_sums(logits, batch['targets'], batch['loss_weights'])
    return sums['ce'] + z_loss * sums['z'], sums

  return objective


def state_shardings(params_shardings, tx, abstract_params, mesh):
  """Shardings of {'params', 'opt_state', 'step'}: optimizer moments follow their param."""
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, abstract_opt, params_shardings,
      transform_non_params=lambda _: sharding.replicated(mesh))
  return {'params': params_shardings, 'opt_state': opt_shardings,
          'step': sharding.replicated(mesh)}


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


def _reduce(sums: dict[str, float], prefix: str) -> dict[str, float]:
  """Weighted sums -> per-token means named `prefix/...`."""
  w = max(sums['weight'], 1.0)
  out = {f'{prefix}/ce': sums['ce'] / w, f'{prefix}/accuracy': sums['correct'] / w}
  if 'z' in sums:
    out[f'{prefix}/z_loss'] = sums['z'] / w
  return out


def evaluate(eval_fn, params, eval_batches, mesh, rules) -> dict[str, float]:
  """Eval loss in nats/token over the fixed eval batches, and perplexity."""
  total: dict[str, float] = {}
  for local in eval_batches:
    sums = jax.device_get(eval_fn(params, sharding.global_batch_from_local(local, mesh, rules)))
    for k, v in sums.items():
      total[k] = total.get(k, 0.0) + float(v)
  out = _reduce(total, 'eval')
  out[metrics_lib.EVAL_LOSS] = out.pop('eval/ce')
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


def train(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
          interrupt_at_step: int | None = None) -> dict[str, Any]:
  """Run (or resume) training. `interrupt_at_step` simulates a preemption (tests)."""
  workdir = pathlib.Path(workdir)
  cfg = config

  # 1. Validate before touching anything: processes and devices first, so the mesh
  #    check sees the real device count.
  sharding.maybe_initialize_distributed(cfg.distributed)
  config_lib.validate(cfg, jax.device_count(), jax.process_count())

  # 2. Mesh; everything below runs inside it with the config's logical-axis rules.
  mesh = sharding.make_mesh(cfg.mesh)
  rules = tuple(cfg.logical_rules)
  with jax.set_mesh(mesh), sharding.use_rules(rules):

    # 3. Data (a bad corpus or tokenizer is a config error: nothing is written yet).
    try:
      data = pipeline.build(cfg)
    except (ValueError, FileNotFoundError) as e:
      raise ConfigError(str(e)) from None

    # 4. Parameters, created directly sharded by jit's out_shardings.
    model_cfg = cfg.model
    abstract_params = transformer.abstract_params(model_cfg)
    param_shardings = sharding.tree_shardings(
        abstract_params, transformer.logical_axes(model_cfg), mesh, rules)

    # 5. Optimizer over the student's parameters only.
    tx = optimizer.make(cfg.train)
    schedule = optimizer.learning_rate_schedule(cfg.train)
    shardings = state_shardings(param_shardings, tx, abstract_params, mesh)

    def _init_state(key):
      params = transformer.init_params(model_cfg, key)
      return {'params': params, 'opt_state': tx.init(params), 'step': jnp.zeros((), jnp.int32)}

    init_state = jax.jit(_init_state, out_shardings=shardings)

    # 6. Restore the latest checkpoint, or start fresh.
    ckpt = checkpointing.Checkpointer(workdir / 'checkpoints', cfg.train.keep_checkpoints,
                                      cfg.train.async_checkpoints)
    meta = {'config': json.loads(cfg.to_json()), 'model': json.loads(model_cfg.to_json()),
            'vocab_path': data.vocab_path, 'vocab_size': data.vocab_size}
    latest = ckpt.latest_step()
    if latest is not None:
      _check_same_model(ckpt.restore_meta(latest), meta, ckpt.directory / str(latest))
      abstract_state = jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
          jax.eval_shape(_init_state, jax.random.key(0)), shardings)
      state, data_state, _ = ckpt.restore(latest, abstract_state)
      data.train.set_state(data_state)
    else:
      state = init_state(jax.random.key(cfg.train.seed))
    start_step = int(jax.device_get(state['step']))

    # 7. Compile: explicit shardings, the state donated so params update in place.
    objective = lm_objective(model_cfg, cfg.train.z_loss)
    batch_shardings = {k: sharding.batch_sharding(mesh, rules) for k in
                       ('inputs', 'targets', 'segment_ids', 'positions', 'loss_weights')}
    train_step = jax.jit(
        steps.make_train_step(objective, tx, cfg.train.grad_accum, schedule),
        in_shardings=(shardings, batch_shardings), out_shardings=(shardings, None),
        donate_argnums=(0,))
    eval_step = jax.jit(steps.make_eval_step(objective),
                        in_shardings=(param_shardings, batch_shardings))

    # 8. Train.
    writer = metrics_lib.MetricsWriter(workdir, cfg.train.steps, start_step,
                                       cfg.train.progress_bar)
    tokens_per_step = cfg.data.global_batch_size * cfg.data.seq_len
    peak, peak_source = flops.device_peak_flops(model_cfg.dtype, cfg.train.peak_flops)
    flops_per_step = flops.train_flops_per_token(model_cfg, cfg.data.seq_len) * tokens_per_step
    if start_step == 0:
      writer.print(param_table(state['params']))
    writer.print(f'mesh {dict(mesh.shape)}; peak {peak / 1e9:.1f} GFLOP/s per device '
                 f'({peak_source}); starting at step {start_step}')
    if jax.process_index() == 0:
      (workdir / 'config.json').write_text(cfg.to_json(indent=2))

    last_eval: dict[str, float] = {}
    pending: list[dict] = []
    step = start_step
    interrupted = False
    window_start, window_steps = time.perf_counter(), 0
    with _StopSignal() as stop:
      while step < cfg.train.steps:
        batch = sharding.global_batch_from_local(next(data.train), mesh, rules)
        state, step_metrics = train_step(state, batch)
        pending.append(step_metrics)
        step += 1
        window_steps += 1
        writer.advance()
        if step == start_step + 1:  # the first step compiles: keep it out of step times
          jax.block_until_ready(state)
          compile_s = time.perf_counter() - window_start
          writer.print(f'first step (compile + run) took {compile_s:.1f}s')
          window_start, window_steps = time.perf_counter(), 0

        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
          host = jax.device_get(pending)  # one device->host sync per log interval
          last = host[-1]
          record = {metrics_lib.TOKENS: step * tokens_per_step,
                    metrics_lib.TRAIN_LOSS: float(last['loss']),
                    **_reduce({k: float(v) for k, v in last.items()}, 'train'),
                    'train/grad_norm': float(last['grad_norm']),
                    'train/learning_rate': float(last['learning_rate'])}
          if window_steps:  # none when the only step since the last log was the compile
            step_time = (time.perf_counter() - window_start) / window_steps
            record.update({
                metrics_lib.STEP_TIME: step_time,
                metrics_lib.TOKENS_PER_SEC: tokens_per_step / step_time,
                metrics_lib.MFU: flops_per_step / step_time / (peak * jax.device_count())})
          writer.write(step, record)
          pending, window_start, window_steps = [], time.perf_counter(), 0

        if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
          last_eval = evaluate(eval_step, state['params'], data.eval_batches, mesh, rules)
          writer.write(step, {metrics_lib.TOKENS: step * tokens_per_step, **last_eval})
          window_start = time.perf_counter()  # eval time is not train step time

        if step % cfg.train.checkpoint_every == 0:
          ckpt.save(step, state, data.train.get_state(), meta)
        if stop.event.is_set() or step == interrupt_at_step:
          interrupted = True
          break

    # 9. Final checkpoint: at the end, and when preempted between intervals.
    ckpt.save(step, state, data.train.get_state(), meta)
    ckpt.close()
    writer.print(f'{"preempted" if interrupted else "finished"} at step {step}; checkpoint '
                 f'in {ckpt.directory}')
    writer.close()
    return {'step': step, 'interrupted': interrupted, **last_eval,
            'params': state['params'] if not interrupted else None}


def _check_same_model(saved: dict, current: dict, where: pathlib.Path) -> None:
  """Refuse to resume a checkpoint of another model or vocabulary (nothing is overwritten)."""
  for key, value in current['model'].items():
    if saved['model'].get(key) != value:
      raise ConfigError(f'model.{key}={value!r} but the checkpoint {where} was written with '
                        f'{saved["model"].get(key)!r}; use a new --workdir or restore that value')
  if saved.get('vocab_size') != current['vocab_size']:
    raise ConfigError(f'vocabulary size {current["vocab_size"]} differs from the checkpoint '
                      f'{where} ({saved.get("vocab_size")}); use a new --workdir')
