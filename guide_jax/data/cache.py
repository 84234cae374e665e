"""The pre-tokenized cache: one source's documents as a token array, built once per
(files, tokenizer) and memory-mapped by every run after.

Layout of <cache_dir>/tokens/<key>/:
  tokens.npy     int32 [n_tokens]   every document, then EOS, concatenated
  offsets.npy    int64 [n_docs + 1] where document i starts; offsets[-1] == n_tokens
  buckets.npy    uint8 [n_docs]     the hash bucket (0-99) of the document's key, so the
                                    train/validation/test split is chosen when reading
  manifest.json  files, record counts, tokenizer
key = a hash of (layout version, tokenizer fingerprint, text_key, each file's path, size
and modification time): a changed file or tokenizer is a new cache, never a stale one.

Building groups the files into shards of about SHARD_BYTES, tokenizes the shards in
parallel (a spawned process pool over the cores, for corpora of 2+ shards a core), and writes each shard atomically into
<key>.partial/, so a killed build resumes with the shards it had finished. The shards are
then concatenated into a temporary directory that is renamed to <key>/ in one step; a
corpus with too many malformed records fails before anything is renamed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import sys

import numpy as np
import tqdm

from guide_jax.data import sources as sources_lib
from guide_jax.data import tokenizer as tokenizer_lib

LAYOUT = 'v1'
SHARD_BYTES = 4 << 20


@dataclasses.dataclass(frozen=True)
class Documents:
  """A selection of a cache's documents: token ranges [starts[i], starts[i] + lengths[i])."""
  tokens: np.ndarray   # the whole cache's tokens (memory-mapped)
  starts: np.ndarray   # int64 [n_docs]
  lengths: np.ndarray  # int64 [n_docs]

  @property
  def n_tokens(self) -> int:
    return int(self.lengths.sum())


class TokenCache:
  """A finished cache directory, memory-mapped."""

  def __init__(self, directory: pathlib.Path):
    self.directory = directory
    self.tokens = np.load(directory / 'tokens.npy', mmap_mode='r')
    self.offsets = np.load(directory / 'offsets.npy')
    self.buckets = np.load(directory / 'buckets.npy')
    self.manifest = json.loads((directory / 'manifest.json').read_text())

  def documents(self, split: str = '', validation_percent: int = 0,
                test_percent: int = 0) -> Documents:
    """All documents, or those of `split` under the hash-bucket rule of sources.split_of."""
    keep = np.ones(len(self.buckets), bool)
    if split == 'validation':
      keep = self.buckets < validation_percent
    elif split == 'test':
      keep = (self.buckets >= validation_percent) & (
          self.buckets < validation_percent + test_percent)
    elif split == 'train':
      keep = self.buckets >= validation_percent + test_percent
    starts = self.offsets[:-1][keep]
    return Documents(self.tokens, starts, self.offsets[1:][keep] - starts)


def _stat(path: str) -> tuple[int, int]:
  if '://' in path:
    from etils import epath
    st = epath.Path(path).stat()
    return int(st.length), int(st.mtime)
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


def add_files(digest, source: sources_lib.Source) -> None:
  """Hash each file's path, key, size and modification time: a changed file changes it."""
  for path, key in zip(source.files, source.keys):
    size, mtime = _stat(path)
    digest.update(f'{path}\0{key}\0{size}\0{mtime}\0'.encode())


def cache_key(source: sources_lib.Source, vocab: tokenizer_lib.AnyVocabulary) -> str:
  digest = hashlib.sha256(f'{LAYOUT}\0{vocab.fingerprint}\0{source.text_key}\0'.encode())
  add_files(digest, source)
  return digest.hexdigest()[:20]


def _shards(source: sources_lib.Source) -> list[list[int]]:
  """File indices grouped into shards of about SHARD_BYTES of input, in file order."""
  shards, current, size = [], [], 0
  for i, path in enumerate(source.files):
    current.append(i)
    size += _stat(path)[0]
    if size >= SHARD_BYTES:
      shards.append(current)
      current, size = [], 0
  return shards + ([current] if current else [])


_VOCABS: dict[str, tokenizer_lib.AnyVocabulary] = {}


def tokenize_shard(files: list[str], keys: list[str], text_key: str, vocab_path: str,
                   out: str) -> dict:
  """Tokenize `files` into the shard file `out` (atomically); returns its counts."""
  vocab = _VOCABS.get(vocab_path) or _VOCABS.setdefault(vocab_path,
                                                         tokenizer_lib.load(vocab_path))
  texts, buckets, counts = [], [], sources_lib.Counts()
  for path, file_key in zip(files, keys):
    fmt, _ = sources_lib.format_of(path)
    for index, text in sources_lib.read_documents(path, text_key, counts):
      texts.append(text)
      key = sources_lib.document_key(file_key, index, fmt)
      buckets.append(sources_lib.bucket_of(key))
  docs = vocab.encode_batch(texts) if texts else []
  lengths = np.array([len(d) + 1 for d in docs], np.int64)
  tokens = np.empty(int(lengths.sum()), np.int32)
  ends = np.cumsum(lengths)
  for d, end in zip(docs, ends):
    tokens[end - len(d) - 1:end - 1] = d
    tokens[end - 1] = vocab.eos_id
  stats = dataclasses.asdict(counts) | {'bytes': sum(_stat(p)[0] for p in files)}
  tmp = f'{out}.{os.getpid()}.tmp.npz'
  np.savez(tmp, tokens=tokens, lengths=lengths, buckets=np.array(buckets, np.uint8),
           stats=np.frombuffer(json.dumps(stats).encode(), np.uint8))
  os.replace(tmp, out)
  return stats


def _spawnable() -> bool:
  """Spawned workers re-import __main__ from its file: impossible for `python - < script`."""
  main_file = getattr(sys.modules['__main__'], '__file__', None)
  return main_file is None or os.path.exists(main_file)


def _init_worker() -> None:
  """A pool worker tokenizes with one thread: the pool already has one worker per core."""
  os.environ['TOKENIZERS_PARALLELISM'] = 'false'  # read when `tokenizers` starts its pool
  tokenizer_lib.ENCODE_THREADS = 1


def _run_shards(jobs: list[tuple], workers: int, progress: tqdm.tqdm) -> None:
  # Spawning costs seconds, and the tokenizers' own threads already use every core for
  # encoding: a pool pays off (parsing in parallel too) when each worker gets 2+ shards.
  if workers <= 1 or len(jobs) < 2 * workers or not _spawnable():
    for job in jobs:
      progress.update(tokenize_shard(*job)['bytes'])
    return
  context = multiprocessing.get_context('spawn')  # never fork a process that runs JAX
  with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context,
                                              initializer=_init_worker) as pool:
    for future in concurrent.futures.as_completed(
        [pool.submit(tokenize_shard, *job) for job in jobs]):
      progress.update(future.result()['bytes'])


def check_counts(counts: sources_lib.Counts, field: str, n_files: int) -> None:
  if counts.records and counts.malformed > sources_lib.MAX_MALFORMED * counts.records:
    raise sources_lib.DataError(
        f'{field}: {counts.malformed} of {counts.records} records '
        f'({100 * counts.malformed / counts.records:.2f}%) are malformed, more than '
        f'{100 * sources_lib.MAX_MALFORMED:g}%; first: {counts.first_problem}')
  if counts.records == counts.malformed + counts.empty:
    raise sources_lib.DataError(
        f'{field}: no usable document in {n_files} file(s) ({counts.empty} empty, '
        f'{counts.malformed} malformed of {counts.records} records); check the files and '
        f'data.text_key')


def build(source: sources_lib.Source, vocab: tokenizer_lib.AnyVocabulary,
          cache_root: pathlib.Path, field: str, workers: int | None = None,
          progress: bool = False) -> TokenCache:
  """The finished cache of `source` under `vocab`, building (or resuming) it when missing."""
  key = cache_key(source, vocab)
  root = cache_root / 'tokens'
  final = root / key
  if (final / 'manifest.json').exists():
    return TokenCache(final)
  partial = root / f'{key}.partial'
  partial.mkdir(parents=True, exist_ok=True)
  shards = _shards(source)
  jobs, total_bytes = [], sum(_stat(p)[0] for p in source.files)
  done_bytes = 0
  for n, indices in enumerate(shards):
    out = partial / f'shard-{n:05d}.npz'
    if out.exists():
      done_bytes += sum(_stat(source.files[i])[0] for i in indices)
      continue
    jobs.append(([source.files[i] for i in indices], [source.keys[i] for i in indices],
                 source.text_key, vocab.path, str(out)))
  bar = tqdm.tqdm(total=total_bytes, initial=done_bytes, unit='B', unit_scale=True,
                  desc=f'tokenizing {field}', disable=not progress)
  with bar:
    _run_shards(jobs, os.cpu_count() if workers is None else workers, bar)
  try:
    return _merge(partial, len(shards), final, source, vocab, field)
  except FileNotFoundError:
    if (final / 'manifest.json').exists():  # another process merged and cleaned up first
      return TokenCache(final)
    raise


def _merge(partial: pathlib.Path, n_shards: int, final: pathlib.Path,
           source: sources_lib.Source, vocab, field: str) -> TokenCache:
  counts, lengths, buckets, sizes = sources_lib.Counts(), [], [], []
  for n in range(n_shards):
    with np.load(partial / f'shard-{n:05d}.npz') as z:
      stats = json.loads(z['stats'].tobytes())
      stats.pop('bytes')
      counts.add(sources_lib.Counts(**stats))
      lengths.append(z['lengths'])
      buckets.append(z['buckets'])
      sizes.append(int(z['lengths'].sum()))
  check_counts(counts, field, len(source.files))
  if counts.malformed or counts.empty:
    logging.warning('%s: skipped %d malformed and %d empty of %d records (first problem: %s)',
                    field, counts.malformed, counts.empty, counts.records,
                    counts.first_problem or 'none')
  lengths = np.concatenate(lengths)
  with tokenizer_lib.staged_directory(final) as tmp:
    tokens = np.lib.format.open_memmap(tmp / 'tokens.npy', mode='w+', dtype=np.int32,
                                       shape=(int(lengths.sum()),))
    at = 0
    for n, size in enumerate(sizes):
      with np.load(partial / f'shard-{n:05d}.npz') as z:
        tokens[at:at + size] = z['tokens']
      at += size
    tokens.flush()
    del tokens
    np.save(tmp / 'offsets.npy', np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    np.save(tmp / 'buckets.npy', np.concatenate(buckets))
    manifest = {'layout': LAYOUT, 'field': field, 'tokenizer': vocab.path, 'tokenizer_fingerprint':
                vocab.fingerprint, 'text_key': source.text_key, 'files': list(source.files),
                'documents': int(len(lengths)), 'tokens': int(lengths.sum()),
                'counts': dataclasses.asdict(counts)}
    (tmp / 'manifest.json').write_text(json.dumps(manifest, indent=1))
  shutil.rmtree(partial, ignore_errors=True)
  return TokenCache(final)
