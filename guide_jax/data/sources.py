"""Document sources: which files, read how, in what proportions.

A source is a set of files (globs, local or gs://) with a weight; `data.train_files` is one
source or a mixture of them. Formats, by suffix unless `data.file_format` names one (text
formats also as `.gz` or `.zst`, a compression always read off the suffix):
  .txt .md .py           the whole file is one document
  .jsonl .json           one JSON object per line (a `.json` starting with `[` is an array of
                         them); the document is the object's `data.text_key` field
  .parquet               the `data.text_key` column, one document per row
  .arrayrecord           one document per record: UTF-8 text, or a JSON object with
  .array_record          `data.text_key`
Malformed records (invalid JSON, no `text_key`, not a string, bytes that are not UTF-8) are
skipped and counted, empty documents skipped and counted apart; `cache.py` turns counts above
MAX_MALFORMED into an error. A file that cannot be read at all (missing, truncated,
corrupt) is a `DataError` naming it.

A large uncompressed JSON-lines file is read in byte ranges (`line_ranges`), a range per
worker: a line belongs to the range in which it starts, and its index is the number of line
starts before it (`count_lines` over the earlier ranges), so the keys equal a whole read's.
A large compressed one is decompressed by one reader into batches of lines
(`line_batches`) that the workers parse and tokenize.

Every document has a key (the file's path relative to its glob's directory, and `:N` for the
N-th record of a multi-document file), and `split_of(key)` assigns it to train, validation or
test by a hash, so a split is stable across machines and file-list lengths.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import io
import itertools
import json
import os
from typing import Iterator, Sequence

from etils import epath

TEXT_SUFFIXES = ('.txt', '.md', '.py')
JSON_SUFFIXES = ('.jsonl', '.json')
RECORD_SUFFIXES = ('.arrayrecord', '.array_record')
COMPRESSIONS = ('.gz', '.zst')
# data.file_format: 'auto' reads the format off the suffix; the others name it (and the
# internal format they read as).
FILE_FORMATS = {'auto': '', 'text': 'text', 'jsonl': 'json', 'parquet': 'parquet',
                'arrayrecord': 'arrayrecord'}
MAX_MALFORMED = 0.01  # above this share of malformed records, a corpus is refused


class DataError(ValueError):
  """Bad input data; the message names the file or field and what would fix it."""


def bucket_of(key: str) -> int:
  """A document key's hash bucket, 0-99: the split reads it (and the cache stores it)."""
  return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 100


def split_of(key: str, validation_percent: int, test_percent: int = 0) -> str:
  bucket = bucket_of(key)
  if bucket < validation_percent:
    return 'validation'
  return 'test' if bucket < validation_percent + test_percent else 'train'


def stat(path: str) -> tuple[int, int]:
  """(size in bytes, modification time) of a local or gs:// file."""
  if '://' in path:
    st = epath.Path(path).stat()
    return int(st.length), int(st.mtime)
  st = os.stat(path)
  return st.st_size, st.st_mtime_ns


@dataclasses.dataclass(frozen=True)
class Source:
  """Files of one mixture component. `keys[i]` is files[i] relative to its glob's root.

  `stats[i]` is files[i]'s (size, mtime), taken once when the Source is made: on gs://
  every stat is a network call, and the cache key, the shard plan and the progress bar all
  need them.
  """
  files: tuple[str, ...]
  keys: tuple[str, ...]
  weight: float = 1.0
  text_key: str = 'text'
  file_format: str = 'auto'
  stats: tuple[tuple[int, int], ...] = ()

  def __post_init__(self):
    if len(self.stats) != len(self.files):
      object.__setattr__(self, 'stats', tuple(stat(f) for f in self.files))


def parse_mixture(value, field: str) -> list[tuple[list[str], float]]:
  """`data.train_files` as [(globs, weight)].

  Accepted: a glob; globs separated by commas; MaxText's mixture `glob,0.3;glob2,0.7`
  (a source per `;`, its weight after the last comma); or, in a config file, a list of
  {'files': glob or [globs], 'weight': w}.
  """
  if isinstance(value, str):
    parts = [p.strip() for p in value.split(';') if p.strip()]
    if not parts:
      raise DataError(f'{field} is empty; give a glob of .txt/.jsonl/.parquet/.arrayrecord files')
    out = []
    for part in parts:
      globs, weight = [g.strip() for g in part.split(',')], 1.0
      if len(parts) > 1 or _is_number(globs[-1]):
        if not _is_number(globs[-1]):
          raise DataError(f'{field}: mixture component {part!r} has no weight; write '
                          f'"glob,WEIGHT;glob2,WEIGHT2"')
        weight = float(globs.pop())
      out.append((globs, weight))
  elif isinstance(value, (list, tuple)):
    out = []
    for i, item in enumerate(value):
      if not isinstance(item, dict) or 'files' not in item:
        raise DataError(f'{field}[{i}]={item!r} must be a dict with "files" (and "weight")')
      files = item['files']
      globs = [files] if isinstance(files, str) else list(files)
      out.append((globs, float(item.get('weight', 1.0))))
  else:
    raise DataError(f'{field}={value!r} must be a glob string or a list of '
                    f'{{"files": ..., "weight": ...}}')
  for i, (globs, weight) in enumerate(out):
    if not (weight > 0) or weight == float('inf'):
      raise DataError(f'{field}: source {i} ({",".join(globs)}) has weight {weight}; '
                      f'weights must be positive')
    if not all(globs):
      raise DataError(f'{field}: source {i} has an empty glob')
  return out


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def _glob_root(pattern: str) -> str:
  """The directory part of `pattern` before its first wildcard ('' for a relative glob
  that starts with one)."""
  parts = pattern.split('/')
  i = next((i for i, p in enumerate(parts) if any(c in p for c in '*?[')), len(parts) - 1)
  return '/'.join(parts[:i]) or ('/' if pattern.startswith('/') else '')


def expand(globs: list[str], field: str) -> tuple[list[str], list[str]]:
  """(files, keys), sorted and de-duplicated; a glob matching nothing is a DataError."""
  found: dict[str, str] = {}
  for pattern in globs:
    root = _glob_root(pattern)
    if '://' in pattern:
      rest = pattern[len(root):].lstrip('/')
      matches = [str(p) for p in epath.Path(root).glob(rest)] if rest else (
          [pattern] if epath.Path(pattern).exists() else [])
    else:
      matches = glob.glob(os.path.expanduser(pattern), recursive=True)
      root = os.path.expanduser(root)
    matches = [m for m in matches if '://' in m or os.path.isfile(m)]
    if not matches:
      raise DataError(f'{field}: {pattern!r} matches no file; check the path (globs: *, **, ?)')
    for m in matches:
      rel = m[len(root):].lstrip('/') if root and m.startswith(root) else m
      found.setdefault(m, rel or os.path.basename(m))
  files = sorted(found)
  return files, [found[f] for f in files]


def sources_of(value, field: str, text_key: str, file_format: str = 'auto') -> list[Source]:
  """The mixture `value` of `field` as Sources with normalised weights; every file's format
  is checked here, before anything is read."""
  parsed = parse_mixture(value, field)
  total = sum(w for _, w in parsed)
  out = []
  for globs, weight in parsed:
    files, keys = expand(globs, field)
    for f in files:
      format_of(f, file_format)
    out.append(Source(tuple(files), tuple(keys), weight / total, text_key, file_format))
  return out


@dataclasses.dataclass
class Counts:
  """What reading a file found, beyond its documents."""
  records: int = 0
  malformed: int = 0
  empty: int = 0
  first_problem: str = ''

  def bad(self, where: str, why: str) -> None:
    self.malformed += 1
    if not self.first_problem:
      self.first_problem = f'{where}: {why}'

  def add(self, other: 'Counts') -> None:
    self.records += other.records
    self.malformed += other.malformed
    self.empty += other.empty
    self.first_problem = self.first_problem or other.first_problem


def format_of(path: str, file_format: str = 'auto') -> tuple[str, str]:
  """(format, compression) of a file: the format by its suffixes, or `file_format` when it
  names one; the compression always by its suffix. Unknown formats are a DataError."""
  name = path.lower()
  compression = next((c for c in COMPRESSIONS if name.endswith(c)), '')
  name = name[:len(name) - len(compression)]
  if FILE_FORMATS.get(file_format):
    fmt = FILE_FORMATS[file_format]
    if compression and fmt in ('parquet', 'arrayrecord'):
      raise DataError(f'{path}: {file_format} files cannot be {compression}-compressed; '
                      f'decompress it or set data.file_format')
    return fmt, compression
  for fmt, suffixes in (('text', TEXT_SUFFIXES), ('json', JSON_SUFFIXES),
                        ('parquet', ('.parquet',)), ('arrayrecord', RECORD_SUFFIXES)):
    if name.endswith(suffixes):
      if compression and fmt in ('parquet', 'arrayrecord'):
        break
      return fmt, compression
  raise DataError(f'{path}: unknown format; data files end in .txt/.md/.py, .jsonl/.json '
                  f'(each also .gz or .zst), .parquet or .arrayrecord, or set '
                  f"data.file_format to 'text', 'jsonl', 'parquet' or 'arrayrecord'")


def _open(path: str, compression: str):
  """A binary stream of the file's decompressed bytes."""
  raw = epath.Path(path).open('rb') if '://' in path else open(path, 'rb')
  if compression == '.gz':
    return gzip.GzipFile(fileobj=raw)
  if compression == '.zst':
    import zstandard  # the `data` extra
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
  return raw


def _decode(data: bytes, where: str, counts: Counts) -> str | None:
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    counts.bad(where, f'bytes that are not UTF-8 (at byte {e.start})')
    return None


def _from_object(obj, text_key: str, where: str, counts: Counts) -> str | None:
  if not isinstance(obj, dict) or text_key not in obj:
    counts.bad(where, f'no {text_key!r} field (set data.text_key)')
    return None
  if not isinstance(obj[text_key], str):
    counts.bad(where, f'field {text_key!r} is {type(obj[text_key]).__name__}, not a string')
    return None
  return obj[text_key]


def read_documents(path: str, text_key: str, counts: Counts, file_format: str = 'auto',
                   lines: 'LineRange | None' = None) -> Iterator[tuple[int, str]]:
  """(record index, text) of each usable non-empty document of `path`, or of the lines
  `lines` of a JSON-lines file.

  Malformed and empty records are skipped and counted in `counts`; a file that cannot be
  read is a DataError naming it.
  """
  fmt, compression = format_of(path, file_format)
  try:
    if lines is not None:
      records = _json_range(path, lines, text_key, counts)
    elif fmt == 'text':
      with _open(path, compression) as f:
        records = [(0, _decode(f.read(), path, counts))]
    elif fmt == 'json':
      records = _json_records(path, compression, text_key, counts)
    elif fmt == 'parquet':
      records = _parquet_records(path, text_key, counts)
    else:
      records = _arrayrecord_records(path, text_key, counts)
    for index, text in records:
      counts.records += 1
      if text is None:
        continue
      if not text.strip():
        counts.empty += 1
        continue
      yield index, text
  except DataError:
    raise
  except Exception as e:  # noqa: BLE001 -- gzip/zstd/pyarrow/array_record each raise their own
    raise DataError(f'{path}: cannot be read ({type(e).__name__}: {e}); the file is '
                    f'truncated or corrupt, or not the format its suffix says') from None


def _json_records(path: str, compression: str, text_key: str, counts: Counts):
  with _open(path, compression) as f:
    head = f.readline()
    if head.lstrip().startswith(b'['):
      text = _decode(head + f.read(), path, counts)
      try:
        items = json.loads(text) if text is not None else []
      except json.JSONDecodeError as e:
        raise DataError(f'{path}: not a JSON array ({e}); write one object per line') from None
      for i, obj in enumerate(items):
        yield i, _from_object(obj, text_key, f'{path} item {i}', counts)
      return
    yield from _json_lines(itertools.chain([head], f), path, text_key, counts)


@dataclasses.dataclass(frozen=True)
class LineRange:
  """The lines of a file that start in bytes [start, end); the first is line `first`.
  With `data`, the lines themselves, as a decompressing reader read them (line_batches)."""
  start: int
  end: int
  first: int = 0
  data: bytes | None = None


def is_json_lines(path: str, file_format: str = 'auto') -> bool:
  """A JSON-lines file (not a `.json` array), compressed or not."""
  fmt, compression = format_of(path, file_format)
  if fmt != 'json':
    return False
  with _open(path, compression) as f:
    return not f.read(4096).lstrip().startswith(b'[')  # an array is read whole


def line_ranges(path: str, size: int, target: int, file_format: str = 'auto'
                ) -> list[LineRange] | None:
  """Byte ranges of about `target` bytes covering an uncompressed JSON-lines file (their
  `first` still 0: see count_lines), or None when it is not one or small enough to read
  whole."""
  if size <= target or format_of(path, file_format)[1] or not is_json_lines(path, file_format):
    return None
  n = -(-size // target)
  bounds = [size * i // n for i in range(n + 1)]
  return [LineRange(a, b) for a, b in zip(bounds, bounds[1:])]


def count_lines(path: str, start: int, end: int, chunk: int = 16 << 20) -> int:
  """How many lines start in bytes [start, end): a line starts at 0 and after each newline."""
  with _open(path, '') as f:
    f.seek(max(start - 1, 0))
    n, left = int(start == 0), end - max(start - 1, 0) - 1
    while left > 0:
      data = f.read(min(chunk, left))
      if not data:
        break
      n += data.count(b'\n')
      left -= len(data)
    return n


def line_batches(path: str, target: int, file_format: str = 'auto') -> Iterator[LineRange]:
  """A compressed JSON-lines file as batches of about `target` decompressed bytes of whole
  lines: one reader decompresses, the batches go to the workers."""
  _, compression = format_of(path, file_format)
  with _open(path, compression) as f:
    first = start = 0
    lines, size = [], 0
    for line in f:
      lines.append(line)
      size += len(line)
      if size >= target:
        yield LineRange(start, start + size, first, b''.join(lines))
        first, start, lines, size = first + len(lines), start + size, [], 0
    if lines:
      yield LineRange(start, start + size, first, b''.join(lines))


def _json_range(path: str, lines: LineRange, text_key: str, counts: Counts):
  if lines.data is not None:
    yield from _json_lines(io.BytesIO(lines.data), path, text_key, counts, lines.first)
    return
  with _open(path, '') as f:
    f.seek(max(lines.start - 1, 0))
    if lines.start > 0:
      f.readline()  # the rest of the line that started before this range (maybe just '\n')
    position = f.tell()

    def in_range():
      nonlocal position
      while position < lines.end:
        line = f.readline()
        if not line:
          return
        position += len(line)
        yield line

    yield from _json_lines(in_range(), path, text_key, counts, lines.first)


def _json_lines(lines, path: str, text_key: str, counts: Counts, first: int = 0):
  for i, line in enumerate(lines, first):
    if not line.strip():
      continue
    where = f'{path} line {i + 1}'
    text = _decode(line, where, counts)
    if text is None:
      yield i, None
      continue
    try:
      obj = json.loads(text)
    except json.JSONDecodeError as e:
      counts.bad(where, f'invalid JSON ({e.msg})')
      yield i, None
      continue
    yield i, _from_object(obj, text_key, where, counts)


def _parquet_records(path: str, text_key: str, counts: Counts):
  try:
    import pyarrow.parquet as pq  # the `data` extra
  except ImportError:
    raise DataError(f'{path}: reading Parquet needs pyarrow; pip install '
                    f"'guide_jax[data]'") from None
  source = epath.Path(path).open('rb') if '://' in path else path
  table = pq.ParquetFile(source)
  if text_key not in table.schema_arrow.names:
    raise DataError(f'{path}: no column {text_key!r} (columns: '
                    f'{", ".join(table.schema_arrow.names)}); set data.text_key')
  index = 0
  for batch in table.iter_batches(columns=[text_key], batch_size=4096):
    for value in batch.column(0).to_pylist():
      if not isinstance(value, str):
        counts.bad(f'{path} row {index}', f'column {text_key!r} is '
                   f'{type(value).__name__}, not a string')
        value = None
      yield index, value
      index += 1


def _arrayrecord_records(path: str, text_key: str, counts: Counts):
  from array_record.python import array_record_module  # grain's dependency
  reader = array_record_module.ArrayRecordReader(path)
  try:
    for index in range(reader.num_records()):
      data = reader.read([index])[0]
      where = f'{path} record {index}'
      text = _decode(data, where, counts)
      if text is not None and text.lstrip().startswith('{'):
        try:
          obj = json.loads(text)
        except json.JSONDecodeError:
          obj = None  # text that happens to start with a brace
        if isinstance(obj, dict):
          text = _from_object(obj, text_key, where, counts)
      yield index, text
  finally:
    reader.close()


def unusable(field: str, counts: Counts, files: Sequence[str]) -> DataError:
  """The error for a corpus without one usable document: it names the files and what is
  wrong with their records."""
  named = ', '.join(files[:3]) + (f' and {len(files) - 3} more' if len(files) > 3 else '')
  if counts.first_problem:
    why = (f'{counts.malformed} of {counts.records} records malformed (first: '
           f'{counts.first_problem}), {counts.empty} empty')
  elif counts.records:
    why = f'all {counts.records} records are empty or blank'
  else:
    why = 'the file(s) hold no records (empty files)'
  hint = ('check data.text_key and the files\' format (data.file_format)'
          if counts.malformed else 'point the field at files with text')
  return DataError(f'{field}: no usable document in {named}: {why}; {hint}')


def document_key(file_key: str, index: int, fmt: str) -> str:
  """The split key of a document: the file for single-document formats, else file:index."""
  return file_key if fmt == 'text' else f'{file_key}:{index}'
