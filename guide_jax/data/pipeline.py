"""One data interface for every backend: step-indexed packed batches, sharded by process.

Global row g of training (g = step * global_batch + i) is a pure function of (seed, g):
the epoch is g // rows_per_epoch, each epoch shuffles the document order and the row
order with its own seed. So the iterator's whole state is the step, a resumed run sees
exactly the batches it would have seen, and the global batch does not depend on how
many processes read it: process p reads rows [p * B/P, (p+1) * B/P) of each batch.

Backends: `embedded` (the stdlib corpus, default), `synthetic` (random tokens, no I/O),
and `seqio` (guide_jax.data.seqio_backend, the only module that imports TensorFlow).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Iterator, Protocol

import jax
import ml_collections
import numpy as np

from guide_jax.data import embedded, packing
from guide_jax.data import tokenizer as tokenizer_lib


class RowSource(Protocol):
  rows_per_epoch: int

  def rows(self, epoch: int, row_indices: np.ndarray) -> dict[str, np.ndarray]:
    ...


class TokenStreamSource:
  """Rows of a document stream; with shuffle, each epoch reorders documents and rows."""

  def __init__(self, tokens: np.ndarray, offsets: np.ndarray, seq_len: int, seed: int,
               shuffle: bool):
    self.tokens, self.offsets = tokens, offsets
    self.seq_len, self.seed, self.shuffle = seq_len, seed, shuffle
    self.rows_per_epoch = (len(tokens) - 1) // seq_len
    self._epoch_cache: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None

  def _epoch(self, epoch: int):
    if self._epoch_cache is None or self._epoch_cache[0] != epoch:
      n_docs = len(self.offsets) - 1
      if self.shuffle:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n_docs)
        row_order = rng.permutation(self.rows_per_epoch)
      else:
        order, row_order = np.arange(n_docs), np.arange(self.rows_per_epoch)
      starts, ends = self.offsets[:-1][order], self.offsets[1:][order]
      tokens = np.concatenate([self.tokens[s:e] for s, e in zip(starts, ends)])
      doc_ids = packing.doc_ids_from_offsets(np.concatenate([[0], np.cumsum(ends - starts)]))
      self._epoch_cache = (epoch, tokens, doc_ids, row_order)
    return self._epoch_cache[1:]

  def rows(self, epoch, row_indices):
    tokens, doc_ids, row_order = self._epoch(epoch)
    return packing.pack_rows(tokens, doc_ids, row_order[row_indices] * self.seq_len,
                             self.seq_len)


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


class BatchIterator:
  """Process-local batches of global step `step`; state = {'step': n}."""

  def __init__(self, source: RowSource, global_batch_size: int,
               process_index: int | None = None, process_count: int | None = None):
    self.source = source
    self.global_batch_size = global_batch_size
    self.process_index = jax.process_index() if process_index is None else process_index
    self.process_count = jax.process_count() if process_count is None else process_count
    self.local_batch_size = global_batch_size // self.process_count
    self.step = 0

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    first = step * self.global_batch_size + self.process_index * self.local_batch_size
    rows = np.arange(first, first + self.local_batch_size)
    epochs = rows // self.source.rows_per_epoch
    parts = [self.source.rows(int(e), rows[epochs == e] % self.source.rows_per_epoch)
             for e in np.unique(epochs)]
    return {k: np.concatenate([p[k] for p in parts]) for k in packing.FIELDS}

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.batch_at(self.step)
    self.step += 1
    return batch

  def get_state(self) -> dict:
    return {'step': self.step}

  def set_state(self, state: dict) -> None:
    self.step = int(state['step'])


@dataclasses.dataclass
class Data:
  """What the trainer needs from the data layer."""
  train: BatchIterator
  eval_batches: list[dict[str, np.ndarray]]   # process-local, fixed across evaluations
  vocab_path: str                              # '' for synthetic data
  vocab_size: int


def build(config: ml_collections.ConfigDict) -> Data:
  """Train iterator and fixed eval batches for config.data (raises ValueError on bad input)."""
  d = config.data
  if d.backend == 'seqio':
    from guide_jax.data import seqio_backend  # TensorFlow: only on this path
    return seqio_backend.build(config)
  if d.backend == 'synthetic':
    vocab_size = config.model.vocab_size
    train = SyntheticSource(vocab_size, d.seq_len, d.seed)
    valid = SyntheticSource(vocab_size, d.seq_len, d.seed + 1_000_003)
    vocab_path = ''
  else:
    corpus = embedded.EmbeddedCorpus(d.embedded_root, d.validation_percent, d.test_percent)
    cache = tokenizer_lib.default_cache_dir(d.cache_dir)
    vocab = load_vocabulary(config, corpus, cache)
    train = TokenStreamSource(*embedded.tokenized_split(corpus, vocab, 'train', cache),
                              d.seq_len, d.seed, shuffle=True)
    valid = TokenStreamSource(*embedded.tokenized_split(corpus, vocab, d.eval_split, cache),
                              d.seq_len, d.seed, shuffle=False)
    vocab_path, vocab_size = vocab.path, vocab.size
  return Data(train=BatchIterator(train, d.global_batch_size),
              eval_batches=fixed_eval_batches(valid, d.global_batch_size, d.eval_batches),
              vocab_path=vocab_path, vocab_size=vocab_size)


def load_vocabulary(config, corpus: embedded.EmbeddedCorpus,
                    cache: pathlib.Path) -> tokenizer_lib.Vocabulary:
  if config.data.tokenizer:
    vocab = tokenizer_lib.load(config.data.tokenizer)
  else:
    vocab = tokenizer_lib.train_or_load(corpus.train_lines, corpus.fingerprint,
                                        config.model.vocab_size, cache)
  if isinstance(vocab, tokenizer_lib.HFVocabulary):
    # Pretrained models often pad the embedding table beyond the tokenizer (Qwen): fine.
    if vocab.size > config.model.vocab_size:
      raise ValueError(f'model.vocab_size={config.model.vocab_size} is smaller than the '
                       f'tokenizer {vocab.path} ({vocab.size} tokens); raise model.vocab_size')
  elif vocab.size != config.model.vocab_size:
    raise ValueError(f'model.vocab_size={config.model.vocab_size} but the tokenizer '
                     f'{vocab.path} has {vocab.size} pieces; set model.vocab_size={vocab.size}')
  return vocab


def fixed_eval_batches(source: RowSource, global_batch_size: int,
                       max_batches: int) -> list[dict[str, np.ndarray]]:
  """The first rows of the (unshuffled) validation stream, as many full batches as fit."""
  n = min(max_batches, source.rows_per_epoch // global_batch_size)
  if n == 0:
    raise ValueError(f'the validation split has {source.rows_per_epoch} rows, fewer than '
                     f'data.global_batch_size={global_batch_size}; lower the batch or add data')
  it = BatchIterator(source, global_batch_size)
  return [it.batch_at(i) for i in range(n)]
