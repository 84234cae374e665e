"""seqio/TFDS data: the only module in guide_jax that imports TensorFlow.

Registered tasks (all LM tasks with one feature, `targets`, a whole document + EOS):
  guide_jax_embedded   the embedded stdlib corpus (same split, same SentencePiece model)
  c4_en                TFDS c4/en:3.1.0 (train / validation)
  lm1b                 TFDS lm1b:1.1.0 (train / test as validation)
The TFDS tasks need `data.tokenizer` (a SentencePiece .model, e.g. on GCS) because their
vocabulary cannot be trained here; `python -m guide_jax.main --config=... 
--config.data.backend=seqio --config.data.seqio_task=c4_en`.

Documents are streamed, each process reading its own shard (seqio.ShardInfo), and packed
into rows exactly like the embedded backend. The iterator's state is (documents consumed,
offset into the next one), restored by re-reading the shard and skipping: deterministic
for a fixed seed, as T5X does.
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np
import seqio
import tensorflow as tf

from guide_jax.data import embedded, packing

TFDS_TASKS = {
    'c4_en': ('c4/en:3.1.0', {'train': 'train', 'validation': 'validation'}),
    'lm1b': ('lm1b:1.1.0', {'train': 'train', 'validation': 'test'}),
}
EMBEDDED_TASK = 'guide_jax_embedded'


def _lm_task(name: str, source: seqio.DataSource, vocab_path: str) -> None:
  vocab = seqio.SentencePieceVocabulary(vocab_path)
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=source,
      preprocessors=[functools.partial(seqio.preprocessors.rekey, key_map={'targets': 'text'}),
                     seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
      output_features={'targets': seqio.Feature(vocab, add_eos=True, dtype=tf.int32)})


def register_tfds_tasks(vocab_path: str) -> None:
  for name, (tfds_name, splits) in TFDS_TASKS.items():
    _lm_task(name, seqio.TfdsDataSource(tfds_name=tfds_name, splits=splits), vocab_path)


def register_embedded_task(corpus: embedded.EmbeddedCorpus, vocab_path: str) -> None:
  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({'text': corpus.texts(split)})
  _lm_task(EMBEDDED_TASK, seqio.FunctionDataSource(dataset_fn, splits=('train', 'validation')),
           vocab_path)


class StreamingBatches:
  """Process-local packed batches from a document stream; state = position in the stream."""

  def __init__(self, make_docs: Callable[[int], Iterator[np.ndarray]], local_batch: int,
               seq_len: int):
    self.make_docs, self.local_batch, self.seq_len = make_docs, local_batch, seq_len
    self.set_state({'docs_consumed': 0, 'offset': 0})

  def set_state(self, state: dict) -> None:
    self.docs_consumed, self.offset = int(state['docs_consumed']), int(state['offset'])
    self._docs = self.make_docs(self.docs_consumed)
    self._buffer: list[np.ndarray] = []  # documents from docs_consumed on

  def get_state(self) -> dict:
    return {'docs_consumed': self.docs_consumed, 'offset': self.offset}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    need = self.offset + self.local_batch * self.seq_len + 1
    while sum(len(d) for d in self._buffer) < need:
      self._buffer.append(next(self._docs))  # StopIteration ends a finite eval stream
    tokens = np.concatenate(self._buffer)
    lengths = [len(d) for d in self._buffer]
    doc_ids = packing.doc_ids_from_offsets(np.concatenate([[0], np.cumsum(lengths)]))
    starts = self.offset + self.seq_len * np.arange(self.local_batch)
    batch = packing.pack_rows(tokens, doc_ids, starts, self.seq_len)
    self.offset += self.local_batch * self.seq_len
    while self._buffer and self.offset >= len(self._buffer[0]):
      self.offset -= len(self._buffer.pop(0))
      self.docs_consumed += 1
    return batch


def _documents(task: seqio.Task, split: str, seed: int, shuffle: bool, epochs) -> Callable:
  # One process reads everything (seqio would otherwise list the TFDS files to shard them).
  shard = (seqio.ShardInfo(index=jax.process_index(), num_shards=jax.process_count())
           if jax.process_count() > 1 else None)

  def make_docs(skip: int) -> Iterator[np.ndarray]:
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=shuffle, seed=seed,
                          shard_info=shard, num_epochs=epochs, use_cached=False,
                          try_in_mem_cache=False)
    for example in ds.skip(skip).as_numpy_iterator():
      yield example['targets'].astype(np.int32)

  return make_docs


def build(config: ml_collections.ConfigDict, embedded_vocab_path: Callable[[], str]) -> dict:
  """pipeline.Data's fields for config.data's seqio task; `embedded_vocab_path()` gives the
  embedded corpus's tokenizer (pipeline's, trained if need be) for guide_jax_embedded."""
  d = config.data
  vocab_path = d.tokenizer
  if d.seqio_task == EMBEDDED_TASK:
    corpus = embedded.EmbeddedCorpus(d.embedded_root, d.validation_percent)
    vocab_path = embedded_vocab_path()
    register_embedded_task(corpus, vocab_path)
  elif d.seqio_task in TFDS_TASKS:
    if not vocab_path:
      raise ValueError(f'data.tokenizer is empty; seqio task {d.seqio_task!r} needs a '
                       f'SentencePiece .model path')
    register_tfds_tasks(vocab_path)
  try:
    task = seqio.get_mixture_or_task(d.seqio_task)
  except ValueError:
    raise ValueError(f'data.seqio_task={d.seqio_task!r} is not a registered seqio Task or '
                     f'Mixture; import the module that registers it') from None
  vocab = task.output_features['targets'].vocabulary
  if vocab.vocab_size != config.model.vocab_size:
    raise ValueError(f'model.vocab_size={config.model.vocab_size} but the task vocabulary '
                     f'has {vocab.vocab_size}; set model.vocab_size={vocab.vocab_size}')
  local = d.global_batch_size // jax.process_count()
  train = StreamingBatches(_documents(task, d.seqio_train_split, d.seed, True, None), local,
                           d.seq_len)
  evaluation = StreamingBatches(_documents(task, d.seqio_eval_split, d.seed, False, 1), local,
                                d.seq_len)
  eval_batches = []
  for _ in range(d.eval_batches):
    try:
      eval_batches.append(next(evaluation))
    except StopIteration:
      break
  if not eval_batches:
    raise ValueError(f'seqio task {d.seqio_task!r} split {d.seqio_eval_split!r} has fewer '
                     f'tokens than one batch; lower data.global_batch_size')
  rows = len(eval_batches) * d.global_batch_size  # the split's first rows: it streams
  return dict(train=train, eval_batches=eval_batches,
              vocab_path=getattr(vocab, 'sentencepiece_model_file', vocab_path),
              vocab_size=vocab.vocab_size, eval_coverage={'rows': rows, 'tokens': rows * d.seq_len})
