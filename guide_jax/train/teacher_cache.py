"""The offline teacher-logits cache: the teacher run once over a run's batches, and read
back by every student that trains on those batches instead of running the teacher.

  DIR/manifest.json            what the cache was made from (teacher, tokenizer, data
                               order, seq_len, steps, k, dtype, temperature), its layout,
                               and the teacher's eval loss on the run's eval batches
  DIR/rows/ROW/BLOCK.bin       row ROW of the global batch at steps [BLOCK * steps_per_file,
                               ...): one record per step, back to back
  DIR/eval/BATCH/ROW.bin       row ROW of the run's fixed eval batch BATCH: one record

A record holds, for each of the row's seq_len target positions: the teacher's top-k logits
(relative to its top-1 logit, in `dtype`), their token ids (uint16 when the vocabulary
fits, else int32), and three float32 values: the log-sum-exp over the whole vocabulary,
the log-sum-exp of logits / temperature over the tokens outside the top-k (the "rest"
bucket, so the mass there is known, not guessed), and the target token's logit (so the
teacher's CE is exact whether or not the target is in the top-k). See
losses.CACHED_TEACHER_FIELDS and losses.sparse_kd_per_token.

Rows are global: the pipeline's global batch does not depend on the process count, so a
cache written by one process is, byte for byte, the cache written by several; process p
computes the batch with the others and writes the files of its own rows. A file is written
whole under a temporary name and then renamed (a gs:// upload is atomic), so a killed build
leaves only complete files, and rebuilding resumes at the first block some row lacks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from etils import epath
from jax.experimental import multihost_utils

from guide_jax import config as config_lib
from guide_jax import losses, paths, sharding
from guide_jax.data import packing, pipeline
from guide_jax.data import tokenizer as tokenizer_lib
from guide_jax.models import transformer

FORMAT = 1
MANIFEST = 'manifest.json'
FILE_BYTES = 16 << 20        # a block file holds about this much (at least one step)
DTYPES = ('float32', 'bfloat16')
# Data settings that decide which tokens the train batches hold (not how they are read).
DATA_ORDER_FIELDS = ('backend', 'train_files', 'eval_files', 'text_key', 'seq_len',
                     'global_batch_size', 'seed', 'embedded_root', 'validation_percent',
                     'test_percent')
FLOAT_FIELDS = ('teacher_lse', 'teacher_rest', 'teacher_target_logit')


class CacheError(config_lib.ConfigError):
  """A cache that is missing, damaged or made for another run. The message names the field."""


def id_dtype(vocab_size: int) -> np.dtype:
  return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def storage_dtype(name: str) -> np.dtype:
  return np.dtype(jnp.bfloat16) if name == 'bfloat16' else np.dtype(np.float32)


@dataclasses.dataclass(frozen=True)
class Layout:
  """The byte layout of one record (one row at one step)."""
  seq_len: int
  top_k: int
  vocab_size: int
  dtype: str

  @property
  def fields(self) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    s, k = self.seq_len, self.top_k
    return ([('teacher_logits', storage_dtype(self.dtype), (s, k)),
             ('teacher_ids', id_dtype(self.vocab_size), (s, k))]
            + [(name, np.dtype(np.float32), (s,)) for name in FLOAT_FIELDS])

  @property
  def record_bytes(self) -> int:
    return sum(dt.itemsize * math.prod(shape) for _, dt, shape in self.fields)

  @property
  def bytes_per_token(self) -> float:
    return self.record_bytes / self.seq_len

  def encode(self, arrays: dict[str, np.ndarray], i: int) -> bytes:
    return b''.join(np.ascontiguousarray(arrays[name][i], dt).tobytes()
                    for name, dt, _ in self.fields)

  def decode(self, buffer: bytes, n_records: int) -> dict[str, np.ndarray]:
    """[n_records, ...] arrays from n_records records back to back."""
    records = np.frombuffer(buffer, np.uint8).reshape(n_records, self.record_bytes)
    out, offset = {}, 0
    for name, dt, shape in self.fields:
      size = dt.itemsize * math.prod(shape)
      out[name] = records[:, offset:offset + size].copy().view(dt).reshape(n_records, *shape)
      offset += size
    return out


def steps_per_file(layout: Layout) -> int:
  return max(1, FILE_BYTES // layout.record_bytes)


def block_path(directory: epath.Path, row: int, block: int) -> epath.Path:
  return directory / 'rows' / f'{row:06d}' / f'{block:06d}.bin'


def blocks(steps: int, per_file: int) -> list[range]:
  """The steps of each block file."""
  return [range(b, min(b + per_file, steps)) for b in range(0, steps, per_file)]


# --- what a cache was made from --------------------------------------------------------------


def data_order(cfg: ml_collections.ConfigDict) -> dict:
  """The data settings that decide the train batches' tokens, as JSON values."""
  return json.loads(json.dumps({k: cfg.data[k] for k in DATA_ORDER_FIELDS}, default=str))


def vocab_fingerprint(cfg) -> str:
  return tokenizer_lib.load(cfg.data.tokenizer).fingerprint if cfg.data.tokenizer else ''


def param_norms(params: dict) -> dict[str, float]:
  """The L2 norm of every teacher leaf: a fingerprint that survives moving the checkpoint
  and changing the mesh (compared with a relative tolerance)."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  norms = jax.jit(lambda leaves: [jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))
                                  for x in leaves])([x for _, x in flat])
  return {jax.tree_util.keystr(path): float(n) for (path, _), n in
          zip(flat, jax.device_get(norms))}


def manifest(cfg, teacher, top_k: int, steps: int, dtype: str, vocab_fingerprint: str,
             norms: dict[str, float]) -> dict:
  layout = Layout(cfg.data.seq_len, top_k, teacher.model.vocab_size, dtype)
  return {
      'format': FORMAT,
      'teacher': {'checkpoint': str(teacher.workdir),
                  'model': json.loads(architecture_json(teacher.model)),
                  'dtype': cfg.teacher.dtype, 'param_norms': norms},
      'tokenizer': {'path': cfg.data.tokenizer, 'fingerprint': vocab_fingerprint},
      'data': data_order(cfg),
      'seq_len': cfg.data.seq_len, 'global_batch_size': cfg.data.global_batch_size,
      'steps': steps, 'top_k': top_k, 'dtype': dtype, 'vocab_size': teacher.model.vocab_size,
      'temperature': float(cfg.loss.temperature),
      'steps_per_file': steps_per_file(layout), 'record_bytes': layout.record_bytes,
      'bytes_per_token': layout.bytes_per_token,
  }


def architecture_json(model: ml_collections.ConfigDict) -> str:
  """The teacher's architecture without how it runs (kernel, remat: execution fields)."""
  return json.dumps({k: v for k, v in model.to_dict().items()
                     if k not in config_lib.EXECUTION_FIELDS}, sort_keys=True, default=str)


def layout_of(m: dict) -> Layout:
  return Layout(m['seq_len'], m['top_k'], m['vocab_size'], m['dtype'])


def read_manifest(directory: epath.Path, field: str = 'teacher.logits_dir') -> dict:
  path = directory / MANIFEST
  if not path.exists():
    raise CacheError(f'{field}={str(directory)!r} holds no {MANIFEST}; build the cache with '
                     f'python -m guide_jax.teacher_logits --config=... --out={directory}')
  try:
    m = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CacheError(f'{field}: {path} is damaged ({e}); rebuild the cache into a new '
                     f'directory') from None
  if m.get('format') != FORMAT:
    raise CacheError(f'{field}: {path} has format {m.get("format")!r}, this version reads '
                     f'{FORMAT}; rebuild the cache')
  return m


def check_matches(m: dict, cfg, directory: epath.Path, teacher_model=None,
                  norms: dict[str, float] | None = None, vocab_fingerprint: str | None = None,
                  field: str = 'teacher.logits_dir') -> None:
  """Refuse (CacheError, one line naming the field) a cache made for another teacher,
  tokenizer, data order, sequence length, temperature or a shorter step range."""
  where = f'{field}={str(directory)!r}'

  def refuse(what: str, ours, theirs, fix: str):
    raise CacheError(f'{what}={ours!r} but {where} was built for {theirs!r}; {fix}')

  rebuild = 'rebuild the cache for this config (python -m guide_jax.teacher_logits)'
  for key, value in data_order(cfg).items():  # seq_len and global_batch_size among them
    if m['data'].get(key) != value:
      refuse(f'data.{key}', value, m['data'].get(key), rebuild)
  if cfg.train.steps > m['steps']:
    refuse('train.steps', cfg.train.steps, f'steps 0..{m["steps"] - 1}',
           f'extend it with --steps={cfg.train.steps} (the build resumes)')
  if float(cfg.loss.temperature) != m['temperature']:
    refuse('loss.temperature', float(cfg.loss.temperature), m['temperature'],
           'its rest bucket is exact only at the temperature it was built for; ' + rebuild)
  if cfg.teacher.dtype != m['teacher']['dtype']:
    refuse('teacher.dtype', cfg.teacher.dtype, m['teacher']['dtype'], rebuild)
  if teacher_model is not None:
    theirs = json.dumps(m['teacher']['model'], sort_keys=True)
    if architecture_json(teacher_model) != theirs:
      mine = json.loads(architecture_json(teacher_model))
      diff = next(k for k in sorted(set(mine) | set(m['teacher']['model']))
                  if mine.get(k) != m['teacher']['model'].get(k))
      refuse(f'the teacher\'s model.{diff}', mine.get(diff), m['teacher']['model'].get(diff),
             'point teacher.checkpoint at the cache\'s teacher or ' + rebuild)
  if norms is None and cfg.teacher.checkpoint and (
      str(paths.workdir_path(cfg.teacher.checkpoint)) != m['teacher']['checkpoint']):
    refuse('teacher.checkpoint', str(cfg.teacher.checkpoint), m['teacher']['checkpoint'],
           'the cache stands for its teacher: point teacher.checkpoint at it, leave it '
           'empty, or ' + rebuild)
  if norms is not None:
    stored = m['teacher']['param_norms']
    bad = [k for k in norms if k not in stored or
           not math.isclose(norms[k], stored[k], rel_tol=1e-4, abs_tol=1e-6)]
    if bad or set(stored) != set(norms):
      refuse('teacher.checkpoint', str(cfg.teacher.checkpoint), m['teacher']['checkpoint'],
             f'its parameters differ ({(bad or sorted(set(stored) ^ set(norms)))[0]}); '
             + rebuild)
  if vocab_fingerprint is not None and vocab_fingerprint != m['tokenizer']['fingerprint']:
    refuse('data.tokenizer', cfg.data.tokenizer, m['tokenizer']['path'], rebuild)


def _same_eval(e: dict | None, cfg) -> bool:
  """Whether the cache's eval batches are the run's: same split, count and row choice (a
  cache from before evaluation spread its rows over the split holds other batches)."""
  return bool(e) and (e['eval_split'], e['eval_batches'], e.get('eval_rows')) == (
      cfg.data.eval_split, cfg.data.eval_batches, pipeline.EVAL_ROWS)


def teacher_eval(m: dict, cfg) -> dict[str, float]:
  """teacher/eval_loss as measured when the cache was built, if the run evaluates on the
  same batches; else nothing (the run does not have the teacher to measure it)."""
  e = m.get('teacher_eval')
  if not _same_eval(e, cfg):
    return {}
  return {'teacher/eval_loss': e['eval_loss']}


def abstract_fields(batch_size: int, seq_len: int, top_k: int, sharding) -> dict:
  """The cached fields of a batch as the step receives them (ShapeDtypeStructs: the
  reader decodes ids to int32 and logits to float32), for AOT and memory checks."""
  field = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sharding)
  return {'teacher_logits': field((batch_size, seq_len, top_k), jnp.float32),
          'teacher_ids': field((batch_size, seq_len, top_k), jnp.int32),
          **{name: field((batch_size, seq_len), jnp.float32) for name in FLOAT_FIELDS}}


# --- the reader ------------------------------------------------------------------------------


class TeacherCache:
  """Process-local rows of the cached teacher at a step: `read(step)`, dict of [rows, ...].

  A block file is read whole the first time one of its steps is asked for and kept until
  the next block, so a step costs no file access in the steady state."""

  def __init__(self, directory: epath.Path, m: dict, lo: int, hi: int):
    self.directory, self.manifest, self.lo, self.hi = directory, m, lo, hi
    self.layout = layout_of(m)
    self.per_file = m['steps_per_file']
    self._block: tuple[int, list[dict]] | None = None

  def check_complete(self, steps: int) -> None:
    """Every block file of steps 0..steps-1 of this process's rows exists whole."""
    for block in blocks(self.manifest['steps'], self.per_file):
      if block.start >= steps:
        break
      for row in range(self.lo, self.hi):
        self._expect(block_path(self.directory, row, block.start // self.per_file),
                     len(block))

  def _expect(self, path: epath.Path, n_records: int) -> None:
    expected = n_records * self.layout.record_bytes
    if not path.exists():
      raise CacheError(f'teacher.logits_dir={str(self.directory)!r} is incomplete: {path} is '
                       f'missing; finish the build by rerunning its teacher_logits command')
    size = path.stat().length
    if size != expected:
      raise CacheError(f'teacher.logits_dir={str(self.directory)!r} is damaged: {path} has '
                       f'{size} bytes, not {expected}; delete it and rerun the build')

  def with_eval(self, cfg, eval_batches: list[dict]) -> list[dict]:
    """The run's eval batches with their cached fields, when the cache holds them for the
    run's eval settings (else as they are: evaluation then reports CE only)."""
    e = self.manifest.get('teacher_eval')
    if not _same_eval(e, cfg) or e.get('batches_cached') != len(eval_batches):
      return eval_batches
    out = []
    for i, batch in enumerate(eval_batches):
      rows = []
      for row in range(self.lo, self.hi):
        path = eval_path(self.directory, i, row)
        self._expect(path, 1)
        rows.append(self.layout.decode(path.read_bytes(), 1))
      out.append({**batch, **self._stacked(rows, 0)})
    return out

  def _stacked(self, rows: list[dict], i: int) -> dict[str, np.ndarray]:
    """Record i of each row, stacked into [rows, ...] arrays as the step takes them."""
    out = {k: np.stack([r[k][i] for r in rows]) for k in rows[0]}
    out['teacher_ids'] = out['teacher_ids'].astype(np.int32)
    out['teacher_logits'] = out['teacher_logits'].astype(np.float32)
    return out

  def read(self, step: int) -> dict[str, np.ndarray]:
    block = step // self.per_file
    if self._block is None or self._block[0] != block:
      steps = blocks(self.manifest['steps'], self.per_file)[block]
      rows = []
      for row in range(self.lo, self.hi):
        path = block_path(self.directory, row, block)
        self._expect(path, len(steps))
        rows.append(self.layout.decode(path.read_bytes(), len(steps)))
      self._block = (block, rows)
    return self._stacked(self._block[1], step - block * self.per_file)


def open_for_run(cfg, teacher_model=None, norms=None, vocab_fingerprint=None,
                 local_rows: tuple[int, int] | None = None) -> TeacherCache:
  """The run's cache (cfg.teacher.logits_dir), checked against the run and complete for
  its steps, reading this process's rows."""
  directory = epath.Path(cfg.teacher.logits_dir)
  m = read_manifest(directory)
  check_matches(m, cfg, directory, teacher_model, norms, vocab_fingerprint)
  if local_rows is None:
    per_process = cfg.data.global_batch_size // jax.process_count()
    local_rows = (jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
  cache = TeacherCache(directory, m, *local_rows)
  cache.check_complete(cfg.train.steps)
  return cache


# --- the writer ------------------------------------------------------------------------------


def cached_fields(z: jax.Array, targets: jax.Array, top_k: int,
                  temperature: float) -> dict[str, jax.Array]:
  """What the cache keeps of the teacher's float32 logits z [..., V] (CACHED_TEACHER_FIELDS),
  every logit relative to the top-1 (shift-invariant for every use, and small numbers
  where bfloat16 storage is most precise)."""
  # The barrier keeps XLA:CPU on its TopK routine: fused with a consumer, the top-k
  # becomes a full sort of the vocabulary (11x slower at V = 1,024).
  top, ids = jax.lax.optimization_barrier(jax.lax.top_k(z, top_k))
  shift = top[..., :1]
  in_top = jnp.put_along_axis(jnp.zeros(z.shape, bool), ids, True, axis=-1, inplace=False)
  rest = jax.nn.logsumexp(jnp.where(in_top, -jnp.inf, (z - shift) / temperature), axis=-1)
  return {'teacher_logits': top - shift, 'teacher_ids': ids,
          'teacher_lse': jax.nn.logsumexp(z, axis=-1) - shift[..., 0],
          'teacher_rest': rest,
          'teacher_target_logit': (jnp.take_along_axis(z, targets[..., None], axis=-1)
                                   - shift)[..., 0]}


def top_k_fn(teacher_model: ml_collections.ConfigDict, top_k: int, temperature: float,
             chunk_len: int) -> Callable:
  """(teacher params, batch) -> the cached fields [B, S, ...] of every target position.
  With chunk_len > 0 the [B, S, V] logits are computed chunk_len positions at a time."""
  dtype = jnp.dtype(teacher_model.dtype)
  stats = lambda h, w, targets: cached_fields(
      losses.output_logits(h, w, dtype, teacher_model.final_logit_softcap), targets, top_k,
      temperature)

  def fn(params, batch):
    model = transformer.bind(teacher_model, params)
    h = model.hidden(batch['inputs'], batch['positions'], batch['segment_ids'])
    w = model.output_kernel()
    if not chunk_len:
      return stats(h, w, batch['targets'])
    b, s = batch['targets'].shape
    split = lambda x: x.reshape(b, s // chunk_len, chunk_len, *x.shape[2:]).swapaxes(0, 1)
    out = jax.lax.map(lambda x: stats(x[0], w, x[1]), (split(h), split(batch['targets'])))
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape(b, s, *x.shape[3:]), out)

  return fn


def first_incomplete_block(directory: epath.Path, m: dict, rows: range) -> int:
  """The first block that some row lacks whole (every process sees the same files)."""
  layout = layout_of(m)
  for i, block in enumerate(blocks(m['steps'], m['steps_per_file'])):
    for row in rows:
      path = block_path(directory, row, i)
      if not path.exists() or path.stat().length != len(block) * layout.record_bytes:
        return i
  return len(blocks(m['steps'], m['steps_per_file']))


def write_atomic(path: epath.Path, data: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  if str(path).startswith('gs://'):  # an upload appears whole or not at all
    path.write_bytes(data)
    return
  tmp = path.parent / f'.{path.name}.tmp'
  tmp.write_bytes(data)
  tmp.replace(path)


@dataclasses.dataclass
class BuildResult:
  directory: epath.Path
  manifest: dict
  steps_built: int        # steps computed by this call (0: the cache was complete)
  seconds: float          # wall time of those steps (first block's compile included)
  tokens_per_s: float     # over the steps after the first (no compile), writes included
  interrupted: bool


def host_top_k_step(cfg, teacher, mesh, rules, top_k: int) -> Callable:
  """process-local batch -> this process's rows of its cached fields (numpy), the teacher
  run on the global batch over the mesh."""
  chunk_len = losses.resolve_chunk_len(cfg.loss.chunk_len, cfg.data.seq_len)
  batch_sharding = sharding.batch_sharding(mesh, rules)
  fn = jax.jit(top_k_fn(teacher.model, top_k, float(cfg.loss.temperature), chunk_len),
               in_shardings=(teacher.shardings, {k: batch_sharding for k in packing.FIELDS}),
               out_shardings=batch_sharding)

  def step(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    batch = sharding.global_batch_from_local({k: local[k] for k in packing.FIELDS}, mesh,
                                             rules)
    return jax.device_get(multihost_utils.global_array_to_host_local_array(
        fn(teacher.params, batch), mesh, batch_sharding.spec))

  return step


def eval_path(directory: epath.Path, batch: int, row: int) -> epath.Path:
  return directory / 'eval' / f'{batch:04d}' / f'{row:06d}.bin'


def write_eval(cfg, out: epath.Path, teacher, data, mesh, rules, top_k: int) -> float:
  """The cached fields of the run's fixed eval batches, one record a row, so a run from
  the cache reports eval/kd, eval/teacher_ce and eval/agreement as an online run does.
  Returns the teacher's eval loss (nats/token over every process's rows), read off the
  same fields (log-sum-exp minus the target's logit): the teacher runs once."""
  layout = Layout(cfg.data.seq_len, top_k, teacher.model.vocab_size,
                  read_manifest(out, '--out')['dtype'])
  top_k_step = host_top_k_step(cfg, teacher, mesh, rules, top_k)
  lo = jax.process_index() * (cfg.data.global_batch_size // jax.process_count())
  sums = np.zeros(2)  # (CE, weight) of this process's rows
  for i, local in enumerate(data.eval_batches):
    host = top_k_step(local)
    for r in range(len(local['inputs'])):
      write_atomic(eval_path(out, i, lo + r), layout.encode(host, r))
    ce = host['teacher_lse'] - host['teacher_target_logit']
    sums += [np.sum(ce * local['loss_weights']), np.sum(local['loss_weights'])]
  ce, weight = np.asarray(multihost_utils.process_allgather(sums)).reshape(-1, 2).sum(0)
  return float(ce / max(weight, 1.0))


def write(cfg, out: epath.Path, teacher, data, mesh, rules, top_k: int, steps: int,
          dtype: str, progress: bool = False, log=print,
          stop_after_blocks: int | None = None) -> BuildResult:
  """Run the teacher over steps 0..steps-1 of `data.train` and write (or finish) the cache
  in `out`. `teacher` is a loaded teacher_lib.Teacher on `mesh`; `stop_after_blocks`
  simulates a kill after that many blocks (tests)."""
  vocab = teacher.model.vocab_size
  if not 1 <= top_k <= vocab:
    raise CacheError(f'--top_k={top_k} must be in [1, the vocabulary size {vocab}]')
  if dtype not in DTYPES:
    raise CacheError(f'--dtype={dtype!r} must be one of {DTYPES}')
  fingerprint = vocab_fingerprint(cfg)
  norms = param_norms(teacher.params)
  new = manifest(cfg, teacher, top_k, steps, dtype, fingerprint, norms)
  if (out / MANIFEST).exists():  # resume (or extend) a build of the same cache
    old = read_manifest(out, '--out')
    check_matches(old, _with_steps(cfg, 0), out, teacher.model, norms, fingerprint, '--out')
    for key in ('top_k', 'dtype'):
      if old[key] != new[key]:
        raise CacheError(f'--{key}={new[key]!r} but --out={str(out)!r} holds a cache built '
                         f'with {old[key]!r}; use a new --out')
    steps = new['steps'] = max(steps, old['steps'])  # a shorter --steps builds nothing
    new['steps_per_file'] = old['steps_per_file']     # the files on disk decide
    if 'teacher_eval' in old:
      new['teacher_eval'] = old['teacher_eval']
  layout = layout_of(new)
  per_file = new['steps_per_file']
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / MANIFEST, json.dumps(new, indent=2).encode())
  multihost_utils.sync_global_devices('teacher_cache manifest')

  local = cfg.data.global_batch_size // jax.process_count()
  lo = jax.process_index() * local
  all_blocks = blocks(steps, per_file)
  start = first_incomplete_block(out, new, range(cfg.data.global_batch_size))
  top_k_step = host_top_k_step(cfg, teacher, mesh, rules, top_k)
  if start:
    log(f'resuming at step {all_blocks[start].start if start < len(all_blocks) else steps} '
        f'({start} of {len(all_blocks)} blocks complete)')
  bar = tqdm.tqdm(total=steps, initial=all_blocks[start].start if start < len(all_blocks)
                  else steps, unit='step', desc='teacher logits', disable=not progress)
  began, timed_from, timed_steps = time.perf_counter(), None, 0
  interrupted, built = False, 0
  for n, i in enumerate(range(start, len(all_blocks))):
    if stop_after_blocks is not None and n == stop_after_blocks:
      interrupted = True
      break
    block = all_blocks[i]
    built += len(block)
    data.train.set_state({'step': block.start})
    records = [[] for _ in range(local)]
    for _ in block:
      host = top_k_step(next(data.train))
      for r in range(local):
        records[r].append(layout.encode(host, r))
      bar.update(1)
      if timed_from is None:  # the first step compiles: time the build from its end on
        timed_from = time.perf_counter()
      else:
        timed_steps += 1
    for r in range(local):
      write_atomic(block_path(out, lo + r, i), b''.join(records[r]))
  bar.close()
  multihost_utils.sync_global_devices('teacher_cache blocks')
  end = time.perf_counter()
  tokens = timed_steps * cfg.data.global_batch_size * cfg.data.seq_len
  rate = tokens / (end - timed_from) if timed_steps and timed_from else float('nan')
  return BuildResult(out, new, built, end - began, rate, interrupted)


def _with_steps(cfg, steps: int):
  c = ml_collections.ConfigDict(cfg.to_dict())
  c.train.steps = steps
  return c
