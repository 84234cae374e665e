"""The embedded default corpus: this interpreter's standard-library source files.

Every machine that runs Python has it, so the demo and the tests need no download. Files
are listed in sorted order (directories named test/tests/site-packages/__pycache__
excluded) and split into train, validation and (optionally) test by a hash of the
relative path, so the split is stable across machines and does not depend on the file
list's length. The test split is held out for studies that tune on validation.

It is one files source of the data pipeline (`source()`): each file a document, tokenized
into the same cache as any other corpus.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import sysconfig

from guide_jax.data import sources

EXCLUDED_DIRS = frozenset({'test', 'tests', 'site-packages', '__pycache__'})


def corpus_root(root: str = '') -> pathlib.Path:
  return pathlib.Path(root or sysconfig.get_paths()['stdlib'])


split_of = sources.split_of


def list_files(root: pathlib.Path) -> list[str]:
  """Sorted relative paths of the corpus's .py files."""
  if not root.is_dir():
    return []
  out = []
  for path in root.rglob('*.py'):
    rel = path.relative_to(root)
    if EXCLUDED_DIRS.isdisjoint(rel.parts[:-1]) and path.is_file():
      out.append(rel.as_posix())
  return sorted(out)


class EmbeddedCorpus:
  """Texts of one split of the corpus, with a fingerprint of the whole corpus."""

  def __init__(self, root: str = '', validation_percent: int = 2, test_percent: int = 0):
    self.root = corpus_root(root)
    self.validation_percent, self.test_percent = validation_percent, test_percent
    self.files = list_files(self.root)
    if not self.files:
      raise ValueError(f'data.embedded_root={str(self.root)!r} holds no .py files (empty '
                       f'corpus); point it at a directory of Python sources or leave it empty')
    self._split = {f: split_of(f, validation_percent, test_percent) for f in self.files}
    # test_percent=0 keeps the key (and the cached tokenizer) of the two-way split.
    digest = hashlib.sha256((f'v1:{validation_percent}' +
                             (f':{test_percent}' if test_percent else '')).encode())
    for f in self.files:
      digest.update(f.encode() + b'\0' + str(os.path.getsize(self.root / f)).encode() + b'\0')
    self.fingerprint = digest.hexdigest()[:16]
    for split in ('train', 'validation') + (('test',) if test_percent else ()):
      if not self.split_files(split):
        raise ValueError(f'data.embedded_root={str(self.root)!r}: the {split} split is '
                         f'empty; add files or change data.{split}_percent')

  def source(self) -> sources.Source:
    """The corpus as a files source: every file, keyed by its relative path."""
    return sources.Source(tuple(str(self.root / f) for f in self.files), tuple(self.files))

  def split_files(self, split: str) -> list[str]:
    return [f for f in self.files if self._split[f] == split]

  def texts(self, split: str) -> list[str]:
    return [(self.root / f).read_text(encoding='utf-8', errors='replace')
            for f in self.split_files(split)]

  def train_lines(self):
    """Non-blank lines of the train split: the tokenizer's training sentences."""
    for text in self.texts('train'):
      for line in text.split('\n'):
        if line.strip():
          yield line
