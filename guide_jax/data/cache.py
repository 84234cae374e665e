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

Building groups the files into shards of about SHARD_BYTES (a large JSON-lines file is
split into byte ranges instead, or, compressed, cut into batches of lines by one reader:
see `plan`), tokenizes the shards in parallel (a spawned process pool over the cores, for
corpora of 2+ shards a core), and writes each shard atomically into <key>.partial/, so a
killed build resumes with the shards it had finished. The shards are
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
from typing import Sequence

import numpy as np
import tqdm

from guide_jax.data import sources as sources_lib
from guide_jax.data import tokenizer as tokenizer_lib

LAYOUT = 'v1'
SHARD_BYTES = 4 << 20  # input bytes of small files grouped into one shard
RANGE_BYTES = 4 << 20  # a JSON-lines file larger than this is split into ranges of it
TEXT_PER_COMPRESSED_BYTE = 4  # what a .gz/.zst byte weighs in text when planning shards


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


def add_files(digest, source: sources_lib.Source) -> None:
  """Hash each file's path, key, size and modification time: a changed file changes it."""
  for path, key, (size, mtime) in zip(source.files, source.keys, source.stats):
    digest.update(f'{path}\0{key}\0{size}\0{mtime}\0'.encode())


def cache_key(source: sources_lib.Source, vocab: tokenizer_lib.AnyVocabulary) -> str:
  digest = hashlib.sha256(f'{LAYOUT}\0{vocab.fingerprint}\0{source.text_key}\0'.encode())
  if source.file_format != 'auto':  # 'auto' adds nothing: the caches built before it stay
    digest.update(f'format={source.file_format}\0'.encode())
  add_files(digest, source)
  return digest.hexdigest()[:20]


@dataclasses.dataclass(frozen=True)
class Piece:
  """What a shard reads of one file: all of it, or the lines of a byte range (or of a batch
  a decompressing reader handed over)."""
  path: str
  key: str
  lines: sources_lib.LineRange | None = None


@dataclasses.dataclass(frozen=True)
class Shard:
  pieces: tuple[Piece, ...]
  bytes: int           # of input, for the progress bar
  stream: bool = False  # a large compressed JSON-lines file: its parts come from one reader


def plan(source: sources_lib.Source) -> list[Shard]:
  """The shards of `source`, in document order: small files grouped into shards of about
  SHARD_BYTES of text (a compressed byte counted as TEXT_PER_COMPRESSED_BYTE); a large
  uncompressed JSON-lines file split into byte ranges of about RANGE_BYTES (their first
  line indices still 0: number_lines sets them); a large compressed one a `stream` shard,
  cut into parts of RANGE_BYTES of lines as it is read. Either way one big file is
  tokenized by every worker."""
  shards, current, size, text = [], [], 0, 0  # text: the estimated text bytes of `current`

  def close():
    nonlocal current, size, text
    if current:
      shards.append(Shard(tuple(current), size))
    current, size, text = [], 0, 0

  for path, key, (file_size, _) in zip(source.files, source.keys, source.stats):
    compressed = bool(sources_lib.format_of(path, source.file_format)[1])
    text_size = file_size * (TEXT_PER_COMPRESSED_BYTE if compressed else 1)
    ranges = sources_lib.line_ranges(path, file_size, RANGE_BYTES, source.file_format)
    stream = (compressed and text_size > RANGE_BYTES and
              sources_lib.is_json_lines(path, source.file_format))
    if ranges or stream:
      close()
      shards.extend([Shard((Piece(path, key, r),), r.end - r.start) for r in ranges] if ranges
                    else [Shard((Piece(path, key),), file_size, stream=True)])
      continue
    current.append(Piece(path, key))
    size, text = size + file_size, text + text_size
    if text >= SHARD_BYTES:
      close()
  close()
  return shards


def number_lines(shards: list[Shard], map_fn) -> list[Shard]:
  """`shards` with each byte range's first line index: the line starts of the file's earlier
  ranges, counted (by `map_fn`, a pool's map) at memory speed before anything is parsed."""
  ranged = [s.pieces[0] for s in shards if s.pieces[0].lines is not None]
  counts = list(map_fn(sources_lib.count_lines, [p.path for p in ranged],
                       [p.lines.start for p in ranged], [p.lines.end for p in ranged]))
  out, seen, i = [], {}, 0
  for shard in shards:
    piece = shard.pieces[0]
    if piece.lines is None:
      out.append(shard)
      continue
    first = seen.get(piece.path, 0)
    seen[piece.path] = first + counts[i]
    i += 1
    lines = dataclasses.replace(piece.lines, first=first)
    out.append(Shard((dataclasses.replace(piece, lines=lines),), shard.bytes))
  return out


def _shard_files(partial: pathlib.Path, n: int) -> list[pathlib.Path] | None:
  """The files shard n was written to, in order, or None when it is not finished: one file,
  or a stream shard's parts once its `.parts` file (their count) is written."""
  whole = partial / f'shard-{n:05d}.npz'
  if whole.exists():
    return [whole]
  parts = partial / f'shard-{n:05d}.parts'
  if parts.exists():
    return [partial / f'shard-{n:05d}-{m:05d}.npz' for m in range(int(parts.read_text()))]
  return None


_VOCABS: dict[str, tokenizer_lib.AnyVocabulary] = {}


def tokenize_shard(shard: Shard, text_key: str, file_format: str, vocab_path: str,
                   out: str) -> dict:
  """Tokenize `shard` into the shard file `out` (atomically); returns its counts."""
  vocab = _VOCABS.get(vocab_path) or _VOCABS.setdefault(vocab_path,
                                                         tokenizer_lib.load(vocab_path))
  texts, buckets, counts = [], [], sources_lib.Counts()
  for piece in shard.pieces:
    fmt, _ = sources_lib.format_of(piece.path, file_format)
    for index, text in sources_lib.read_documents(piece.path, text_key, counts, file_format,
                                                  piece.lines):
      texts.append(text)
      key = sources_lib.document_key(piece.key, index, fmt)
      buckets.append(sources_lib.bucket_of(key))
  docs = vocab.encode_batch(texts) if texts else []
  lengths = np.array([len(d) + 1 for d in docs], np.int64)
  tokens = np.empty(int(lengths.sum()), np.int32)
  ends = np.cumsum(lengths)
  for d, end in zip(docs, ends):
    tokens[end - len(d) - 1:end - 1] = d
    tokens[end - 1] = vocab.eos_id
  stats = dataclasses.asdict(counts) | {'bytes': shard.bytes}
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


def _jobs(shards: list[Shard], todo: list[int], partial: pathlib.Path, file_format: str,
          parts: dict[int, int]):
  """(shard, out file) to tokenize: each unfinished shard, a stream shard part by part as
  its reader decompresses them (parts already written are read past, not redone);
  `parts[n]` gets a stream shard's part count once its reader is done."""
  for n in todo:
    shard = shards[n]
    if not shard.stream:
      yield shard, partial / f'shard-{n:05d}.npz'
      continue
    piece = shard.pieces[0]
    m = -1
    for m, lines in enumerate(sources_lib.line_batches(piece.path, RANGE_BYTES, file_format)):
      out = partial / f'shard-{n:05d}-{m:05d}.npz'
      if not out.exists():
        yield Shard((dataclasses.replace(piece, lines=lines),), 0), out
    parts[n] = m + 1


def _run_shards(shards: list[Shard], todo: list[int], partial: pathlib.Path,
                args: tuple[str, str, str], workers: int, progress: tqdm.tqdm) -> None:
  """Tokenize the shards `todo` (args: text_key, file_format, vocab path), numbering the
  ranges' lines first; in a process pool when there is enough work for one, with a bounded
  number of parts in flight (a stream shard's reader runs ahead of the workers by that)."""
  work = sum(2 * workers if shards[n].stream else 1 for n in todo)
  parts: dict[int, int] = {}

  def finish(stats):
    progress.update(stats['bytes'])

  def close_streams():
    for n, count in parts.items():
      (partial / f'shard-{n:05d}.parts').write_text(str(count))
      progress.update(shards[n].bytes)

  # Spawning costs seconds, and the tokenizers' own threads already use every core for
  # encoding: a pool pays off (parsing in parallel too) when each worker gets 2+ shards.
  if workers <= 1 or work < 2 * workers or not _spawnable():
    shards = number_lines(shards, map)
    for shard, out in _jobs(shards, todo, partial, args[1], parts):
      finish(tokenize_shard(shard, *args, str(out)))
    close_streams()
    return
  context = multiprocessing.get_context('spawn')  # never fork a process that runs JAX
  with concurrent.futures.ProcessPoolExecutor(min(workers, work), mp_context=context,
                                              initializer=_init_worker) as pool:
    shards = number_lines(shards, pool.map)
    pending = set()
    for shard, out in _jobs(shards, todo, partial, args[1], parts):
      pending.add(pool.submit(tokenize_shard, shard, *args, str(out)))
      if len(pending) >= 2 * workers:
        done, pending = concurrent.futures.wait(
            pending, return_when=concurrent.futures.FIRST_COMPLETED)
        for future in done:
          finish(future.result())
    for future in concurrent.futures.as_completed(pending):
      finish(future.result())
  close_streams()


def check_counts(counts: sources_lib.Counts, field: str, files: Sequence[str]) -> None:
  if counts.records and counts.malformed > sources_lib.MAX_MALFORMED * counts.records:
    raise sources_lib.DataError(
        f'{field}: {counts.malformed} of {counts.records} records '
        f'({100 * counts.malformed / counts.records:.2f}%) are malformed, more than '
        f'{100 * sources_lib.MAX_MALFORMED:g}%; first: {counts.first_problem}')
  if counts.records == counts.malformed + counts.empty:
    raise sources_lib.unusable(field, counts, files)


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
  shards = plan(source)
  todo = [n for n in range(len(shards)) if _shard_files(partial, n) is None]
  done_bytes = sum(s.bytes for n, s in enumerate(shards) if n not in todo)
  bar = tqdm.tqdm(total=sum(s.bytes for s in shards), initial=done_bytes, unit='B',
                  unit_scale=True, desc=f'tokenizing {field}', disable=not progress)
  with bar:
    _run_shards(shards, todo, partial, (source.text_key, source.file_format, vocab.path),
                os.cpu_count() if workers is None else workers, bar)
  try:
    return _merge(partial, len(shards), final, source, vocab, field)
  except FileNotFoundError:
    if (final / 'manifest.json').exists():  # another process merged and cleaned up first
      return TokenCache(final)
    raise


def _merge(partial: pathlib.Path, n_shards: int, final: pathlib.Path,
           source: sources_lib.Source, vocab, field: str) -> TokenCache:
  counts, lengths, buckets, sizes = sources_lib.Counts(), [], [], []
  files = []
  for n in range(n_shards):
    written = _shard_files(partial, n)
    if written is None:  # build() catches this: another process may have merged already
      raise FileNotFoundError(partial / f'shard-{n:05d}')
    files += written
  for f in files:
    with np.load(f) as z:
      stats = json.loads(z['stats'].tobytes())
      stats.pop('bytes')
      counts.add(sources_lib.Counts(**stats))
      lengths.append(z['lengths'])
      buckets.append(z['buckets'])
      sizes.append(int(z['lengths'].sum()))
  check_counts(counts, field, source.files)
  if counts.malformed or counts.empty:
    logging.warning('%s: skipped %d malformed and %d empty of %d records (first problem: %s)',
                    field, counts.malformed, counts.empty, counts.records,
                    counts.first_problem or 'none')
  lengths = np.concatenate(lengths)
  with tokenizer_lib.staged_directory(final) as tmp:
    tokens = np.lib.format.open_memmap(tmp / 'tokens.npy', mode='w+', dtype=np.int32,
                                       shape=(int(lengths.sum()),))
    at = 0
    for f, size in zip(files, sizes):
      with np.load(f) as z:
        tokens[at:at + size] = z['tokens']
      at += size
    tokens.flush()
    del tokens
    np.save(tmp / 'offsets.npy', np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    np.save(tmp / 'buckets.npy', np.concatenate(buckets))
    manifest = {'layout': LAYOUT, 'field': field, 'tokenizer': vocab.path, 'tokenizer_fingerprint':
                vocab.fingerprint, 'text_key': source.text_key,
                'file_format': source.file_format, 'files': list(source.files),
                'documents': int(len(lengths)), 'tokens': int(lengths.sum()),
                'counts': dataclasses.asdict(counts)}
    (tmp / 'manifest.json').write_text(json.dumps(manifest, indent=1))
  shutil.rmtree(partial, ignore_errors=True)
  return TokenCache(final)
