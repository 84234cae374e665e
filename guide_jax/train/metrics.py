"""Metric sinks: DIR/metrics.jsonl, TensorBoard event files (tensorboardX, no TensorFlow),
and a console progress bar. Only process 0 writes. DIR may be a gs:// URL: object stores
cannot append, so there the jsonl is kept in memory and rewritten whole at each write."""

from __future__ import annotations

import json
import os

import jax
import tqdm

from guide_jax import paths

STEP, TOKENS = 'step', 'tokens'
TRAIN_LOSS, EVAL_LOSS, EVAL_PPL = 'train/loss', 'eval/loss', 'eval/ppl'
EVAL_BPB = 'eval/bits_per_byte'  # eval/loss in bits over the UTF-8 bytes of the text
TOKENS_PER_SEC, STEP_TIME, MFU = 'perf/tokens_per_sec', 'perf/step_time_s', 'perf/mfu'


class MetricsWriter:

  def __init__(self, workdir: str | os.PathLike, total_steps: int, start_step: int,
               progress_bar: bool):
    self.enabled = jax.process_index() == 0
    self._jsonl = self._tb = self._bar = None
    if not self.enabled:
      return
    workdir = paths.workdir_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._path = workdir / 'metrics.jsonl'
    if paths.is_url(workdir):  # a resumed run continues the file it finds
      self._lines = self._path.read_text() if self._path.exists() else ''
    else:
      self._jsonl = self._path.open('a')
    from tensorboardX import SummaryWriter
    self._tb = SummaryWriter(str(workdir / 'tensorboard'))
    if progress_bar:
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit='step',
                            dynamic_ncols=True)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {STEP: int(step), **{k: _plain(v) for k, v in metrics.items()}}
    line = json.dumps(record) + '\n'
    if self._jsonl is None:
      self._lines += line
      self._path.write_text(self._lines)
    else:
      self._jsonl.write(line)
      self._jsonl.flush()
    for key, value in record.items():
      if key != STEP and isinstance(value, (int, float)):
        self._tb.add_scalar(key, value, step)
    if self._bar is not None:
      shown = {k.split('/')[-1]: f'{v:.4g}' for k, v in record.items()
               if k in (TRAIN_LOSS, EVAL_LOSS, TOKENS_PER_SEC, MFU)}
      self._bar.set_postfix(shown, refresh=False)

  def advance(self, steps: int = 1) -> None:
    if self._bar is not None:
      self._bar.update(steps)

  def print(self, message: str) -> None:
    if self.enabled:
      (self._bar.write if self._bar is not None else print)(message)

  def close(self) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.close()
    self._tb.close()
    if self._jsonl is not None:
      self._jsonl.close()


def _plain(v):
  v = v.item() if hasattr(v, 'item') else v
  return float(v) if isinstance(v, float) else v
