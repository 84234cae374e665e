"""Workdir paths: local folders or object-store URLs (gs://, s3://) behind one API.

Multi-host slices need a workdir every host sees, which on Cloud TPU means a gs:// bucket;
orbax already writes there (tensorstore for arrays, etils.epath for the rest), so the
trainer's own files (config.json, metrics.jsonl) go through epath as well.
"""

from __future__ import annotations

import os

from etils import epath


def is_url(path: str | os.PathLike) -> bool:
  """True for object-store paths (gs://bucket/...), which cannot be appended to."""
  return '://' in os.fspath(path)


def workdir_path(path: str | os.PathLike) -> epath.Path:
  """`path` as an epath.Path: local paths made absolute (orbax requires it), URLs kept
  as they are (pathlib would collapse gs:// to gs:/)."""
  p = epath.Path(path)
  return p if is_url(path) else p.absolute()
