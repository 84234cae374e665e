"""One data pipeline for every corpus: step-indexed packed batches, sharded by process, on grain.

Corpora are sources (sources.py) tokenized once into memory-mapped caches (cache.py):
  embedded   the stdlib corpus: a files source over this interpreter's `*.py` (the default)
  files      `data.train_files` (a glob or a weighted mixture) and `data.eval_files`
  synthetic  random tokens, no I/O
  seqio      guide_jax.data.seqio_backend (the only module that imports TensorFlow)

Global row g of a source (its g-th row since step 0) is a pure function of (seed, g): the
epoch is g // rows_per_epoch, and each epoch shuffles the document order and the row order
with its own seed. A mixture gives source s about weight_s * global_batch_size rows of
every step (`Mixture`), also as a pure function of the step. So the iterator's whole state
is the step, a resumed run sees exactly the batches it would have seen, and the global
batch does not depend on how many processes read it: process p computes only rows
[p * B/P, (p+1) * B/P) of each batch. grain runs the per-step map with threads that
prefetch the next batches; its iterator state is the next step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import threading
from typing import Iterator, Protocol, Sequence

import grain
import jax
import ml_collections
import numpy as np

from guide_jax.data import cache as cache_lib
from guide_jax.data import embedded, packing
from guide_jax.data import sources as sources_lib
from guide_jax.data import tokenizer as tokenizer_lib

# The tokenizer trained for a corpus without one reads at most this much of its train text.
TOKENIZER_TRAINING_BYTES = 256 << 20


class RowSource(Protocol):
  rows_per_epoch: int

  def rows(self, epoch: int, row_indices: np.ndarray) -> dict[str, np.ndarray]:
    ...


class PackedRows:
  """Rows of seq_len + 1 tokens cut from documents concatenated in a per-epoch order.

  Random access: row r of an epoch is found by binary search in the cumulative lengths
  of that epoch's document order, so nothing but the order (O(documents)) is held.
  """

  def __init__(self, docs: cache_lib.Documents, seq_len: int, seed: int, shuffle: bool):
    self.docs, self.seq_len, self.seed, self.shuffle = docs, seq_len, seed, shuffle
    self.rows_per_epoch = max(docs.n_tokens - 1, 0) // seq_len
    self._epoch_cache: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None
    self._lock = threading.Lock()  # grain calls rows() from several threads

  def _epoch(self, epoch: int):
    with self._lock:
      if self._epoch_cache is None or self._epoch_cache[0] != epoch:
        n_docs = len(self.docs.lengths)
        if self.shuffle:
          rng = np.random.default_rng([self.seed, epoch])
          order = rng.permutation(n_docs)
          row_order = rng.permutation(self.rows_per_epoch)
        else:
          order, row_order = np.arange(n_docs), np.arange(self.rows_per_epoch)
        ends = np.cumsum(self.docs.lengths[order])
        self._epoch_cache = (epoch, order, ends, row_order)
      return self._epoch_cache[1:]

  def documents_in(self, row_indices: np.ndarray) -> np.ndarray:
    """The documents (indices into self.docs) that epoch 0's rows `row_indices` touch."""
    order, ends, row_order = self._epoch(0)
    first = row_order[row_indices] * self.seq_len
    lo = np.searchsorted(ends, first, side='right')
    hi = np.searchsorted(ends, first + self.seq_len, side='right')
    slots = np.unique(np.concatenate([np.arange(a, b + 1) for a, b in zip(lo, hi)]))
    return np.unique(order[slots[slots < len(order)]])

  def rows(self, epoch, row_indices):
    order, ends, row_order = self._epoch(epoch)
    positions = (row_order[row_indices] * self.seq_len)[:, None] + np.arange(self.seq_len + 1)
    slot = np.searchsorted(ends, positions, side='right')  # which document of the epoch
    doc = order[slot]
    within = positions - (ends[slot] - self.docs.lengths[doc])
    window = np.asarray(self.docs.tokens[self.docs.starts[doc] + within])
    return packing.pack_windows(window, slot)


class SyntheticSource:
  """Uniform random tokens, one segment per row; a pure function of (seed, epoch, row)."""

  def __init__(self, vocab_size: int, seq_len: int, seed: int, rows_per_epoch: int = 1 << 20):
    self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed
    self.rows_per_epoch = rows_per_epoch

  def rows(self, epoch, row_indices):
    out = np.stack([np.random.default_rng([self.seed, epoch, int(r)]).integers(
        0, self.vocab_size, self.seq_len + 1, dtype=np.int32) for r in row_indices])
    n, s = len(row_indices), self.seq_len
    return {'inputs': out[:, :-1], 'targets': out[:, 1:],
            'segment_ids': np.ones((n, s), np.int32),
            'positions': np.broadcast_to(np.arange(s, dtype=np.int32), (n, s)).copy(),
            'loss_weights': np.ones((n, s), np.float32)}


def synthetic_batch(vocab_size: int, batch: int, seq_len: int) -> dict[str, np.ndarray]:
  """One batch of uniform random tokens (benchmarks and tests: no corpus, no I/O)."""
  return BatchIterator(SyntheticSource(vocab_size, seq_len, seed=0), batch, 0, 1).batch_at(0)


class Mixture:
  """Which rows of each step come from which source, as a pure function of the step.

  Step k's rows [b_s, b_(s+1)) come from source s, with b_s = floor(W_s * B + phi_k) for the
  cumulative weights W_s and an offset phi_k that runs through PERIOD evenly spaced values
  (in a scrambled order). So every step gives source s floor or ceil of w_s * B rows, and
  every PERIOD steps give it w_s * B * PERIOD rows to within one. Source s's rows before
  step k, needed to index into it, come from a table over one period.
  """
  PERIOD, STRIDE = 1024, 7919  # STRIDE is prime to PERIOD: a permutation of the offsets

  def __init__(self, weights: Sequence[float], global_batch_size: int):
    cumulative = np.concatenate([[0.0], np.cumsum(weights) / np.sum(weights)])
    cumulative[-1] = 1.0
    phi = ((np.arange(self.PERIOD) * self.STRIDE) % self.PERIOD + 0.5) / self.PERIOD
    self.bounds = np.floor(cumulative[None, :] * global_batch_size + phi[:, None]).astype(
        np.int64)                                              # [PERIOD, S + 1]
    counts = np.diff(self.bounds, axis=1)                      # [PERIOD, S]
    self.before = np.concatenate([np.zeros((1, len(weights)), np.int64),
                                  np.cumsum(counts, axis=0)])  # [PERIOD + 1, S]

  def at(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    """(bounds [S + 1] of the step's row blocks, rows each source gave before the step)."""
    cycles, j = divmod(step, self.PERIOD)
    return self.bounds[j], cycles * self.before[-1] + self.before[j]


class BatchIterator:
  """Process-local batches of global step `step` over weighted sources; state = {'step': n}."""

  def __init__(self, sources: RowSource | Sequence[RowSource], global_batch_size: int,
               process_index: int | None = None, process_count: int | None = None,
               weights: Sequence[float] | None = None, prefetch: int = 0):
    self.sources = [sources] if not isinstance(sources, (list, tuple)) else list(sources)
    self.mixture = Mixture(weights or [1.0] * len(self.sources), global_batch_size)
    self.global_batch_size = global_batch_size
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    self.local_batch_size = global_batch_size // self.process_count
    self.prefetch = prefetch
    self.step = 0
    self._batches: Iterator | None = None

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    bounds, before = self.mixture.at(step)
    lo = self.process_index * self.local_batch_size
    hi = lo + self.local_batch_size
    parts = []
    for s, source in enumerate(self.sources):
      first, last = max(bounds[s], lo), min(bounds[s + 1], hi)
      if first >= last:
        continue
      rows = before[s] + np.arange(first - bounds[s], last - bounds[s])
      epochs = rows // source.rows_per_epoch
      parts += [source.rows(int(e), rows[epochs == e] % source.rows_per_epoch)
                for e in np.unique(epochs)]
    return {k: np.concatenate([p[k] for p in parts]) for k in packing.FIELDS}

  def _start(self) -> Iterator:
    """grain: the per-step map, run ahead by `prefetch` threads, positioned at self.step."""
    if not self.prefetch:
      return (self.batch_at(k) for k in itertools.count(self.step))
    steps = grain.MapDataset.range(1 << 62).map(self.batch_at)
    batches = iter(steps.to_iter_dataset(grain.ReadOptions(
        num_threads=self.prefetch, prefetch_buffer_size=self.prefetch)))
    batches.set_state({'next_index': self.step})
    return batches

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._batches is None:
      self._batches = self._start()
    batch = next(self._batches)
    self.step += 1
    return batch

  def get_state(self) -> dict:
    return {'step': self.step}

  def set_state(self, state: dict) -> None:
    self.step = int(state['step'])
    self._batches = None


@dataclasses.dataclass
class Data:
  """What the trainer needs from the data layer."""
  train: BatchIterator
  eval_batches: list[dict[str, np.ndarray]]   # process-local, fixed across evaluations
  vocab_path: str                              # '' for synthetic data
  vocab_size: int
  eval_coverage: dict[str, int] = dataclasses.field(default_factory=dict)  # fixed_eval_batches'


@dataclasses.dataclass
class Corpus:
  """A tokenizable corpus: train sources (weighted) and where evaluation reads."""
  train: list[sources_lib.Source]
  eval: sources_lib.Source | None   # None: the held-out split of the train sources
  fingerprint: str                  # of the files and the split (names a trained tokenizer)
  held_out: tuple[int, int]         # (validation_percent, test_percent) of the hash split


def corpus_of(config: ml_collections.ConfigDict) -> Corpus:
  """The files corpus of config.data, else the embedded one (no tokenization yet)."""
  d = config.data
  if d.backend != 'files':
    corpus = embedded.EmbeddedCorpus(d.embedded_root, d.validation_percent, d.test_percent)
    return Corpus([corpus.source()], None, corpus.fingerprint,
                  (d.validation_percent, d.test_percent))
  train = sources_lib.sources_of(d.train_files, 'data.train_files', d.text_key, d.file_format)
  held_out = (0, 0)
  if d.eval_files:
    evals = sources_lib.sources_of(d.eval_files, 'data.eval_files', d.text_key, d.file_format)
    evaluation = sources_lib.Source(sum((e.files for e in evals), ()),
                                    sum((e.keys for e in evals), ()), 1.0, d.text_key,
                                    d.file_format, sum((e.stats for e in evals), ()))
  else:
    evaluation, held_out = None, (d.validation_percent, d.test_percent)
  digest = hashlib.sha256(f'files:{held_out}:{d.text_key}'.encode())
  if d.file_format != 'auto':
    digest.update(f'format={d.file_format}'.encode())
  for source in train:
    cache_lib.add_files(digest, source)
  return Corpus(train, evaluation, digest.hexdigest()[:16], held_out)


def training_lines(corpus: Corpus) -> Iterator[str]:
  """Non-blank lines of the train documents (each source's share of a byte budget).

  A source without one usable document is a DataError naming its files and what is wrong
  with their records, not a tokenizer that fails to train on nothing."""
  budget = TOKENIZER_TRAINING_BYTES // len(corpus.train)
  validation, test = corpus.held_out
  for i, source in enumerate(corpus.train):
    used, counts, documents = 0, sources_lib.Counts(), 0
    for path, file_key in zip(source.files, source.keys):
      fmt, _ = sources_lib.format_of(path, source.file_format)
      for index, text in sources_lib.read_documents(path, source.text_key, counts,
                                                    source.file_format):
        documents += 1
        key = sources_lib.document_key(file_key, index, fmt)
        if corpus.eval is None and sources_lib.split_of(key, validation, test) != 'train':
          continue
        for line in text.split('\n'):
          if line.strip():
            yield line
        used += len(text)
        if used >= budget:
          break
      if used >= budget:
        break
    if not documents:
      field = 'data.train_files' if len(corpus.train) == 1 else f'data.train_files[{i}]'
      raise sources_lib.unusable(field, counts, source.files)


def build(config: ml_collections.ConfigDict, progress: bool = False) -> Data:
  """Train iterator and fixed eval batches for config.data (raises ValueError on bad input)."""
  d = config.data
  if d.backend == 'seqio':
    from guide_jax.data import seqio_backend  # TensorFlow: only on this path
    return Data(**seqio_backend.build(
        config, lambda: load_vocabulary(config, corpus_of(config)).path))
  if d.backend == 'synthetic':
    vocab_size = config.model.vocab_size
    train = [SyntheticSource(vocab_size, d.seq_len, d.seed)]
    valid = [SyntheticSource(vocab_size, d.seq_len, d.seed + 1_000_003)]
    weights, vocab_path = None, ''
  else:
    corpus = corpus_of(config)
    vocab = load_vocabulary(config, corpus)
    caches = tokenize(config, corpus, vocab, progress)
    validation, test = corpus.held_out
    # With data.eval_files, train reads every train document and eval its own cache;
    # without, both read their hash split of the train caches.
    own_eval = corpus.eval is not None
    train_caches, eval_caches = caches[:len(corpus.train)], caches[len(corpus.train):]
    train = [PackedRows(c.documents('' if own_eval else 'train', validation, test),
                        d.seq_len, d.seed, shuffle=True) for c in train_caches]
    valid = [PackedRows(c.documents('' if own_eval else d.eval_split, validation, test),
                        d.seq_len, d.seed, shuffle=False)
             for c in (eval_caches if own_eval else train_caches)]
    for rows, c in zip(train, caches):
      if rows.rows_per_epoch == 0:
        raise sources_lib.DataError(
            f'{c.manifest["field"]}: the train split has {rows.docs.n_tokens} tokens, fewer '
            f'than data.seq_len + 1 = {d.seq_len + 1}; add data or lower data.seq_len')
    weights, vocab_path, vocab_size = [s.weight for s in corpus.train], vocab.path, vocab.size
  eval_batches, eval_coverage = fixed_eval_batches(
      valid, d.global_batch_size, d.eval_batches, weights if len(valid) == len(train) else None)
  if vocab_path:
    add_target_bytes(eval_batches, vocab.token_bytes())
  return Data(train=BatchIterator(train, d.global_batch_size, weights=weights,
                                  prefetch=d.prefetch),
              eval_batches=eval_batches, vocab_path=vocab_path, vocab_size=vocab_size,
              eval_coverage=eval_coverage)


def add_target_bytes(batches: list[dict[str, np.ndarray]], token_bytes: np.ndarray) -> None:
  """`target_bytes`: the UTF-8 bytes of each target token, which evaluation sums (with the
  loss weights) to report bits per byte beside nats per token."""
  for batch in batches:
    batch['target_bytes'] = token_bytes[batch['targets']].astype(np.float32)


def tokenize(config, corpus: Corpus, vocab: tokenizer_lib.AnyVocabulary,
             progress: bool = False) -> list[cache_lib.TokenCache]:
  """The caches of the train sources, then of the eval source (if it has its own files)."""
  d = config.data
  root = tokenizer_lib.default_cache_dir(d.cache_dir)
  workers = d.workers or None
  named = [(s, 'data.train_files' if corpus.eval is not None or len(corpus.train) == 1 else
            f'data.train_files[{i}]') for i, s in enumerate(corpus.train)]
  if d.backend == 'embedded':
    named = [(corpus.train[0], 'data.embedded_root')]
  if corpus.eval is not None:
    named.append((corpus.eval, 'data.eval_files'))
  return [cache_lib.build(s, vocab, root, field, workers, progress) for s, field in named]


def prepare(config: ml_collections.ConfigDict, progress: bool = True) -> dict:
  """Train the tokenizer (if none is given) and build every cache of config.data; returns
  what each cache holds. Training does the same on first use; this does it ahead."""
  corpus = corpus_of(config)
  vocab = load_vocabulary(config, corpus)
  caches = tokenize(config, corpus, vocab, progress)
  return {'tokenizer': vocab.path, 'caches': [
      {'directory': str(c.directory), 'files': len(c.manifest['files']),
       'documents': c.manifest['documents'], 'tokens': c.manifest['tokens'],
       **{k: v for k, v in c.manifest['counts'].items() if k != 'first_problem'}}
      for c in caches]}


def load_vocabulary(config, corpus: Corpus) -> tokenizer_lib.AnyVocabulary:
  """data.tokenizer (the teacher's, for a student), else one trained on the train text."""
  if config.data.tokenizer:
    try:
      vocab = tokenizer_lib.load(config.data.tokenizer)
    except (ValueError, FileNotFoundError) as e:
      raise sources_lib.DataError(f'data.tokenizer: {e}') from None
  else:
    vocab = tokenizer_lib.train_or_load(
        lambda: training_lines(corpus), corpus.fingerprint, config.model.vocab_size,
        tokenizer_lib.default_cache_dir(config.data.cache_dir))
  if isinstance(vocab, tokenizer_lib.HFVocabulary):
    # Pretrained models often pad the embedding table beyond the tokenizer (Qwen): fine.
    if vocab.size > config.model.vocab_size:
      raise ValueError(f'model.vocab_size={config.model.vocab_size} is smaller than the '
                       f'tokenizer {vocab.path} ({vocab.size} tokens); raise model.vocab_size')
  elif vocab.size != config.model.vocab_size:
    raise ValueError(f'model.vocab_size={config.model.vocab_size} but the tokenizer '
                     f'{vocab.path} has {vocab.size} pieces; set model.vocab_size={vocab.size}')
  return vocab


# How evaluation picks its rows; recorded where eval batches are stored (teacher-logits
# caches), so that batches picked another way are never mistaken for these.
EVAL_ROWS = 'spread'


class SpreadRows:
  """`n` rows spread evenly over one epoch of an unshuffled source (rows i * R // n), so
  that evaluation covers a held-out split from its first document to its last instead of
  its first rows. All of it when it has no more than `n` rows."""

  def __init__(self, source: RowSource, n: int):
    self.source, self.rows_per_epoch = source, n
    self.picked = np.arange(n, dtype=np.int64) * source.rows_per_epoch // n

  def rows(self, epoch, row_indices):
    assert epoch == 0, 'evaluation reads one pass'
    return self.source.rows(0, self.picked[row_indices])

  def coverage(self) -> dict[str, int]:
    """Documents (of the split's) and target tokens these rows hold."""
    out = {'rows': self.rows_per_epoch, 'tokens': self.rows_per_epoch * getattr(
        self.source, 'seq_len', 0)}
    if isinstance(self.source, PackedRows):
      out['documents'] = len(self.source.documents_in(self.picked))
      out['split_documents'] = len(self.source.docs.lengths)
      out['split_tokens'] = self.source.docs.n_tokens
    else:  # synthetic: every row is its own document
      out['documents'] = self.rows_per_epoch
    return out


def fixed_eval_batches(sources: Sequence[RowSource], global_batch_size: int, max_batches: int,
                       weights: Sequence[float] | None = None
                       ) -> tuple[list[dict[str, np.ndarray]], dict[str, int]]:
  """As many full batches as fit (up to `max_batches`) of rows spread over the whole of each
  (unshuffled) validation stream, and what they cover: {'rows', 'tokens', 'documents',
  'split_documents', 'split_tokens'} summed over the streams (the global batch's, not this
  process's)."""
  it = BatchIterator(list(sources), global_batch_size, weights=weights)
  available = np.array([s.rows_per_epoch for s in it.sources])
  n = max_batches
  while n > 0 and np.any(it.mixture.at(n)[1] > available):  # rows steps 0..n-1 read
    n -= 1
  if n == 0:
    raise ValueError(f'the validation split has {available.tolist()} rows, fewer than '
                     f'one batch of data.global_batch_size={global_batch_size}; lower the '
                     f'batch or add data (data.eval_files, data.validation_percent)')
  needed = it.mixture.at(n)[1]
  spread = [SpreadRows(s, int(k)) for s, k in zip(it.sources, needed)]
  it.sources = spread
  coverage: dict[str, int] = {}
  for s in spread:
    if s.rows_per_epoch:
      for k, v in s.coverage().items():
        coverage[k] = coverage.get(k, 0) + v
  return [it.batch_at(i) for i in range(n)], coverage
