"""Metric sinks: DIR/metrics.jsonl, TensorBoard event files (tensorboardX, no TensorFlow),
and a console progress bar. Only process 0 writes. DIR may be a gs:// URL: object stores
cannot append, so there the jsonl is kept in memory and rewritten whole at each write."""

from __future__ import annotations

import json
import os
import time

import jax
import tqdm

from guide_jax import paths

STEP, TOKENS = 'step', 'tokens'
TRAIN_LOSS, EVAL_LOSS, EVAL_PPL = 'train/loss', 'eval/loss', 'eval/ppl'
EVAL_BPB = 'eval/bits_per_byte'  # eval/loss in bits over the UTF-8 bytes of the text
TOKENS_PER_SEC, STEP_TIME, MFU = 'perf/tokens_per_sec', 'perf/step_time_s', 'perf/mfu'
SAMPLE_TIME = 'perf/sample_time_s'  # on-policy sampling per step, within perf/step_time_s


def _records_up_to(text: str, step: int) -> str:
  """The complete JSON lines of `text` whose step is at most `step`."""
  kept = []
  for line in text.splitlines(keepends=True):
    if not line.endswith('\n'):
      break  # cut short
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if record.get(STEP, 0) <= step:
      kept.append(line)
  return ''.join(kept)


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
    # A resumed run continues the file it finds, from its checkpoint's step: records of
    # steps after it (redone now) and a line cut short by a kill are dropped, so the file
    # reads as if the run had never stopped.
    kept = _records_up_to(self._path.read_text() if self._path.exists() else '', start_step)
    if paths.is_url(workdir):
      self._lines = kept
    else:
      if self._path.exists():
        tmp = workdir / 'metrics.jsonl.tmp'
        tmp.write_text(kept)
        tmp.replace(self._path)
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


class PerfMeter:
  """Step time, tokens/s and MFU over the steps since the last report, timed on the host
  between syncs. `restart()` after anything that is not a train step (the first step's
  compile, an evaluation) keeps it out of the step time."""

  def __init__(self, tokens_per_step: int, student_flops: float, teacher_flops: float,
               peak_per_device: float, devices: int):
    self.tokens_per_step = tokens_per_step
    self.student_flops, self.teacher_flops = student_flops, teacher_flops
    self.peak = peak_per_device * devices
    self.restart()

  def restart(self) -> None:
    self._start, self._steps, self._sample_s = time.perf_counter(), 0, 0.0

  def sampled(self, seconds: float) -> None:
    """Time a step spent sampling the student's rows (on-policy distillation), part of
    its step time: reported as perf/sample_time_s per step."""
    self._sample_s += seconds

  def seconds(self) -> float:
    return time.perf_counter() - self._start

  def step(self) -> None:
    self._steps += 1

  def report(self) -> dict[str, float]:
    """The window's numbers ({} when it holds no step), and a new window."""
    if not self._steps:
      self.restart()
      return {}
    step_time = self.seconds() / self._steps
    budget = self.peak * step_time
    out = {STEP_TIME: step_time, TOKENS_PER_SEC: self.tokens_per_step / step_time,
           MFU: (self.student_flops + self.teacher_flops) / budget,
           'perf/mfu_student': self.student_flops / budget,
           'perf/mfu_teacher': self.teacher_flops / budget}
    if self._sample_s:
      out[SAMPLE_TIME] = self._sample_s / self._steps
    self.restart()
    return out
