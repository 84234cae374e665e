"""Hugging Face checkpoints: safetensors read tensor by tensor onto shardings, and written.

Loading never holds the model twice on the host: each parameter is built with
`jax.make_array_from_callback`, whose callback assembles only the requested shard, one
layer's tensor at a time, from a safetensors file opened (memory-mapped) for that one
read and closed again, so mapped pages never pile up in the resident set. No torch.

Saving writes `model.safetensors`, or numbered shards plus `model.safetensors.index.json`
when the tensors exceed `max_shard_bytes`; each shard is built and written on its own.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np
from etils import epath
from safetensors import safe_open
from safetensors.numpy import save_file

from guide_jax.hf import families
from guide_jax.hf.families import HFError

SAFETENSORS_INDEX = 'model.safetensors.index.json'
# Tokenizer and generation files copied along with a model (those present).
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'tokenizer.model', 'vocab.json', 'merges.txt', 'added_tokens.json')


def is_hf_dir(path: str | os.PathLike) -> bool:
  """A directory with a Hugging Face config.json (and not a guide_jax workdir)."""
  p = epath.Path(path)
  return (p / 'config.json').exists() and not (p / 'checkpoints').exists()


def read_config(hf_dir: str | os.PathLike) -> dict:
  path = epath.Path(hf_dir) / 'config.json'
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise HFError(f'{path} is unreadable ({type(e).__name__}); point teacher.checkpoint at '
                  f'a Hugging Face model directory') from None


def model_config(hf_dir) -> ml_collections.ConfigDict:
  return families.model_config(read_config(hf_dir))


def _local(path: epath.Path) -> str:
  """safetensors memory-maps local files: a remote (gs://) file is copied to a local cache."""
  if not str(path).startswith(('gs://', 's3://')):
    return str(path)
  cache = epath.Path(os.environ.get('GUIDE_JAX_CACHE') or
                     os.path.expanduser('~/.cache/guide_jax')) / 'hf' / path.parent.name
  cache.mkdir(parents=True, exist_ok=True)
  local = cache / path.name
  if not local.exists():
    tmp = local.with_suffix('.partial')
    path.copy(tmp, overwrite=True)
    tmp.rename(local)
  return str(local)


class SafetensorsReader:
  """Tensor name -> its file, for one or many safetensors files (index or not)."""

  def __init__(self, hf_dir: str | os.PathLike):
    self.dir = epath.Path(hf_dir)
    index = self.dir / SAFETENSORS_INDEX
    if index.exists():
      weight_map = json.loads(index.read_text())['weight_map']
      self.files = {name: self.dir / f for name, f in weight_map.items()}
    else:
      shards = sorted(self.dir.glob('*.safetensors'))
      if not shards:
        raise HFError(f'{self.dir} holds no *.safetensors; convert PyTorch .bin weights with '
                      f'transformers (save_pretrained(safe_serialization=True)) first')
      self.files = {}
      for shard in shards:
        with safe_open(_local(shard), 'numpy') as f:
          self.files.update({name: shard for name in f.keys()})
    self.read_names: set[str] = set()

  def shape(self, name: str) -> tuple[int, ...]:
    with safe_open(_local(self.files[name]), 'numpy') as f:
      return tuple(f.get_slice(name).get_shape())

  def get(self, name: str) -> np.ndarray:
    if name not in self.files:
      raise HFError(f'{self.dir}: tensor {name!r} is missing; the checkpoint does not match '
                    f'its config.json')
    self.read_names.add(name)
    with safe_open(_local(self.files[name]), 'numpy') as f:
      return f.get_tensor(name)


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def get_path(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def load_params(hf_dir, model: ml_collections.ConfigDict, abstract: dict, shardings: dict,
                dtype: str) -> dict:
  """The checkpoint's parameters as arrays on `shardings`, stored in `dtype`.

  `abstract`/`shardings` are the model's (transformer.abstract_params_and_shardings).
  Every tensor of the checkpoint must be used (bar known buffers): a leftover tensor
  means an architecture feature this mapping does not know, which is refused.
  """
  family = families.FAMILIES[model.family]
  reader = SafetensorsReader(hf_dir)
  target = np.dtype(jax.numpy.dtype(dtype))
  params: dict = {}
  for row in family.tensors(model):
    shape = tuple(get_path(abstract, row.ours).shape)

    def read(name, layer_shape, row=row):
      value = reader.get(name)
      try:
        return row.to_ours(value, layer_shape).astype(target)
      except ValueError:
        raise HFError(f'{reader.dir}: tensor {name!r} has shape {value.shape}, which does not '
                      f'fit {".".join(row.ours)} {layer_shape} of its config.json') from None

    def shard(index, row=row, shape=shape):
      if not row.layered:
        return read(row.hf, shape)[index]
      layers = range(model.n_layers)[index[0]]
      out = None
      for j, i in enumerate(layers):
        piece = read(row.hf.format(i=i), shape[1:])[index[1:]]
        if out is None:
          out = np.empty((len(layers),) + piece.shape, target)
        out[j] = piece
      return out

    cache: dict = {}

    def cached_shard(index, shard=shard, cache=cache):
      key = tuple((s.start, s.stop, s.step) for s in index)
      if key not in cache:  # replicated leaves: read once, not once per device
        cache[key] = shard(index)
      return cache[key]

    sharding = get_path(shardings, row.ours)
    set_path(params, row.ours, jax.make_array_from_callback(shape, sharding, cached_shard))
  leftover = sorted(n for n in set(reader.files) - reader.read_names
                    if not n.endswith(family.ignored)
                    and not (model.tie_embeddings and n == 'lm_head.weight'))
  if leftover:
    raise HFError(f'{reader.dir}: tensor {leftover[0]!r} (and {len(leftover) - 1} more) has '
                  f'no place in the {family.name} mapping; this architecture is not supported')
  return params


def hf_tensors(model: ml_collections.ConfigDict, leaf: Callable[[tuple, int | None], np.ndarray],
               family: families.Family) -> Iterator[tuple[str, np.ndarray]]:
  """(name, tensor) of the Hugging Face checkpoint, one tensor at a time.

  `leaf(path, layer)` gives our leaf at `path` (one layer's slice when `layer` is set).
  Rows of one fused tensor (GPT-2's c_attn) are joined along the last axis.
  """
  groups: dict[str, list] = collections.defaultdict(list)
  for row in family.tensors(model):
    groups[row.hf].append(row)
  for template, rows in groups.items():
    rows.sort(key=lambda r: r.part[0] if r.part else 0)
    for layer in (range(model.n_layers) if rows[0].layered else [None]):
      parts = [r.to_hf(leaf(r.ours, layer)) for r in rows]
      name = template.format(i=layer) if layer is not None else template
      yield name, parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)


def save_tensors(tensors: Iterator[tuple[str, np.ndarray]], out_dir: epath.Path,
                 max_shard_bytes: int) -> list[str]:
  """Write `tensors` as safetensors shards of at most `max_shard_bytes` (a tensor larger
  than that gets a shard of its own); returns the file names written."""
  current: dict[str, np.ndarray] = {}
  size = 0
  written: list[tuple[str, list[str], int]] = []

  def flush():
    nonlocal current, size
    if current:
      tmp_name = f'.shard-{len(written):05d}.safetensors'
      save_file(current, str(out_dir / tmp_name), metadata={'format': 'pt'})
      written.append((tmp_name, list(current), size))
      current, size = {}, 0

  for name, value in tensors:
    if current and size + value.nbytes > max_shard_bytes:
      flush()
    current[name] = value
    size += value.nbytes
  flush()
  if len(written) == 1:
    os.replace(out_dir / written[0][0], out_dir / 'model.safetensors')
    return ['model.safetensors']
  names, weight_map = [], {}
  for k, (tmp_name, keys, _) in enumerate(written):
    final = f'model-{k + 1:05d}-of-{len(written):05d}.safetensors'
    os.replace(out_dir / tmp_name, out_dir / final)
    names.append(final)
    weight_map.update({key: final for key in keys})
  index = {'metadata': {'total_size': sum(s for *_, s in written)}, 'weight_map': weight_map}
  (out_dir / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2))
  return names + [SAFETENSORS_INDEX]


def copy_tokenizer(src_dir: epath.Path, out_dir: epath.Path) -> list[str]:
  """Copy the tokenizer files found in `src_dir`; returns their names."""
  copied = []
  for name in TOKENIZER_FILES:
    if (src_dir / name).exists():
      shutil.copyfile(src_dir / name, out_dir / name)
      copied.append(name)
  return copied
