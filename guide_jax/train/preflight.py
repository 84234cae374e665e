"""Checks of a run against this machine, before anything is built or written.

`config.validate` checks a config on its own; these need the machine: whether the remote
paths it names can be reached from here (a DNS lookup bounded to a few seconds, instead
of a storage client's minutes of retries), and whether the student's parameters,
optimizer state and gradients, the teacher, and the step's logits can fit the host's
memory (CPU) or the devices' (when JAX reports it). Each failure is a ConfigError naming
the field and the way out.
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
import socket
import threading

import jax
import ml_collections

from guide_jax import config as config_lib
from guide_jax.models import transformer

REMOTE_HOSTS = {'gs://': 'storage.googleapis.com', 's3://': 's3.amazonaws.com'}
DNS_TIMEOUT_S = 5.0
EXISTS_TIMEOUT_S = 20.0


def _bounded(fn, timeout: float, default):
  """fn() in a daemon thread; `default` when it takes longer than `timeout` seconds."""
  result = [default]

  def target():
    try:
      result[0] = fn()
    except Exception:  # pylint: disable=broad-except
      result[0] = default

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(timeout)
  return result[0]


@functools.lru_cache(maxsize=None)
def resolves(host: str) -> bool:
  return _bounded(lambda: bool(socket.getaddrinfo(host, 443)), DNS_TIMEOUT_S, False)


def check_remote_paths(cfg: ml_collections.ConfigDict, workdir) -> None:
  """Every gs:// (or s3://) path the run reads or writes must be reachable from here."""
  fields = {'data.tokenizer': cfg.data.tokenizer, 'data.embedded_root': cfg.data.embedded_root,
            'teacher.checkpoint': cfg.teacher.checkpoint, '--workdir': str(workdir)}
  for field, value in fields.items():
    for prefix, host in REMOTE_HOSTS.items():
      if not str(value).startswith(prefix):
        continue
      if not resolves(host):
        raise config_lib.ConfigError(
            f'{field}={value!r} is unreachable: {host} does not resolve (no network access '
            f'to {prefix} from this machine?); use a local path, or a --config=FILE:runlocal '
            f'variant for a local smoke test')
      if field != '--workdir':  # a workdir is created; inputs must be there
        from etils import epath
        if not _bounded(lambda v=value: epath.Path(v).exists(), EXISTS_TIMEOUT_S, False):
          raise config_lib.ConfigError(
              f'{field}={value!r} does not exist or cannot be read from here (checked for '
              f'{EXISTS_TIMEOUT_S:.0f} s); check the path and this machine\'s credentials')


def check_workdir(workdir) -> None:
  """A local workdir (or a folder above it) that exists as a file cannot hold a run."""
  path = str(workdir)
  if '://' in path:
    return
  for parent in [path, *map(str, pathlib.Path(path).parents)]:
    if os.path.exists(parent):
      if not os.path.isdir(parent):
        raise config_lib.ConfigError(
            f'--workdir={path!r}: {parent!r} is a file, not a directory; pass a new or '
            f'existing directory')
      return


def _param_count(model: ml_collections.ConfigDict) -> int:
  return sum(math.prod(a.shape) for a in jax.tree.leaves(transformer.abstract_params(model)))


def memory_estimate(cfg: ml_collections.ConfigDict,
                    teacher_model: ml_collections.ConfigDict | None) -> dict[str, float]:
  """Bytes the run needs at least, by part (activations other than logits not counted)."""
  param_bytes = 4 if cfg.model.param_dtype == 'float32' else 2
  n_student = _param_count(cfg.model)
  # params + AdamW's two moments (in the param dtype) + gradients
  out = {'student': n_student * param_bytes * 4}
  micro_tokens = cfg.data.global_batch_size // max(cfg.train.grad_accum, 1) * cfg.data.seq_len
  logits = micro_tokens * cfg.model.vocab_size * 4  # float32 logits, and their gradient
  out['logits'] = 2 * logits
  if teacher_model is not None:
    teacher_bytes = 2 if cfg.teacher.dtype == 'bfloat16' else 4
    out['teacher'] = _param_count(teacher_model) * teacher_bytes
    out['logits'] += logits  # the teacher's
  return out


def available_memory() -> tuple[float | None, str]:
  """(bytes, what) the run can use: the devices' total where JAX reports it, else the
  host's (CPU devices share the host's memory)."""
  device = jax.devices()[0]
  if device.platform != 'cpu':
    stats = device.memory_stats() or {}
    if stats.get('bytes_limit'):
      return float(stats['bytes_limit']) * jax.device_count(), (
          f'{jax.device_count()} x {device.device_kind}')
    return None, device.device_kind
  try:
    with open('/proc/meminfo') as f:
      info = dict(line.split(':', 1) for line in f)
    available = float(info['MemAvailable'].split()[0]) * 1024
  except (OSError, KeyError, ValueError):
    available = float(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))
  return available * jax.process_count(), 'this host'


_LABELS = {'student': 'student params + AdamW state + gradients', 'teacher': 'teacher',
           'logits': 'float32 logits'}


def check_memory(cfg: ml_collections.ConfigDict,
                 teacher_model: ml_collections.ConfigDict | None) -> None:
  available, where = available_memory()
  if available is None:
    return
  need = memory_estimate(cfg, teacher_model)
  total = sum(need.values())
  if total > available:
    parts = ', '.join(f'{_LABELS[k]} {v / 2**30:.1f}' for k, v in need.items())
    raise config_lib.ConfigError(
        f'the run needs at least {total / 2**30:.1f} GiB ({parts}), more than the '
        f'{available / 2**30:.1f} GiB of '
        f'{where}; smoke-test it with --config=FILE:runlocal, run it on a TPU slice '
        f'(python -m guide_jax.aot --config=FILE checks one fits), or shrink model/batch')
