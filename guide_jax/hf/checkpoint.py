"""Hugging Face checkpoints: safetensors read tensor by tensor onto shardings, and written.

Loading never holds the model twice on the host: each parameter is built with
`jax.make_array_from_callback`, whose callback assembles only the requested shard, one
layer's tensor at a time, from a safetensors file opened (memory-mapped) for that one
read and closed again, so mapped pages never pile up in the resident set. No torch.

Saving writes `model.safetensors`, or numbered shards plus `model.safetensors.index.json`
when the tensors exceed `max_shard_bytes`. The files are streamed: the header is written
from the planned shapes, then each tensor is computed, written and dropped, so an export
holds one tensor beyond the model.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import shutil
import struct
from typing import Callable

import jax
import ml_collections
import numpy as np
from etils import epath
from safetensors import SafetensorError, safe_open

from guide_jax.hf import families
from guide_jax.hf.families import HFError

SAFETENSORS_INDEX = 'model.safetensors.index.json'
# Tokenizer and generation files copied along with a model (those present).
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
                   'tokenizer.model', 'vocab.json', 'merges.txt', 'added_tokens.json')


_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


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


@contextlib.contextmanager
def _open(path: epath.Path):
  """safe_open, with a damaged file (truncated by an interrupted download, say) as one
  HFError naming it instead of safetensors' own traceback."""
  try:
    with safe_open(_local(path), 'numpy') as f:
      yield f
  except SafetensorError as e:
    raise HFError(f'{path} is not a readable safetensors file ({e}); it is probably '
                  f'truncated: download it again') from None


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
        with _open(shard) as f:
          self.files.update({name: shard for name in f.keys()})
    self.read_names: set[str] = set()

  def shape(self, name: str) -> tuple[int, ...]:
    with _open(self.files[name]) as f:
      return tuple(f.get_slice(name).get_shape())

  def get(self, name: str) -> np.ndarray:
    if name not in self.files:
      raise HFError(f'{self.dir}: tensor {name!r} is missing; the checkpoint does not match '
                    f'its config.json')
    self.read_names.add(name)
    with _open(self.files[name]) as f:
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


@dataclasses.dataclass
class PlannedTensor:
  """One tensor of an export: its name and shape now, its values when `make()` is called."""
  name: str
  shape: tuple[int, ...]
  make: Callable[[], np.ndarray]


def export_plan(model: ml_collections.ConfigDict, leaf: Callable[[tuple, int | None], np.ndarray],
                leaf_shape: Callable[[tuple], tuple[int, ...]],
                family: families.Family) -> list[PlannedTensor]:
  """Every tensor of the Hugging Face checkpoint, in file order, computed lazily.

  `leaf(path, layer)` gives our leaf at `path` (one layer's slice when `layer` is set),
  `leaf_shape(path)` its shape without the layer axis. Rows of one fused tensor (GPT-2's
  c_attn) are joined along the last axis.
  """
  groups: dict[str, list] = collections.defaultdict(list)
  for row in family.tensors(model):
    groups[row.hf].append(row)
  plan = []
  for template, rows in groups.items():
    rows.sort(key=lambda r: r.part[0] if r.part else 0)
    shapes = [r.hf_shape(leaf_shape(r.ours)) for r in rows]
    shape = shapes[0][:-1] + (sum(s[-1] for s in shapes),)

    for layer in (range(model.n_layers) if rows[0].layered else [None]):
      def make(rows=rows, layer=layer):
        parts = [r.to_hf(leaf(r.ours, layer)) for r in rows]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
      name = template.format(i=layer) if layer is not None else template
      plan.append(PlannedTensor(name, shape, make))
  return plan


_SAFETENSORS_DTYPES = {'float32': 'F32', 'bfloat16': 'BF16', 'float16': 'F16'}


def write_safetensors(path, tensors: list[PlannedTensor], dtype: np.dtype) -> int:
  """Stream `tensors` into one safetensors file, computing one tensor at a time (the
  header needs only shapes, so nothing is held beyond the tensor being written)."""
  itemsize = np.dtype(dtype).itemsize
  header, offset = {'__metadata__': {'format': 'pt'}}, 0
  for t in tensors:
    size = math.prod(t.shape) * itemsize
    header[t.name] = {'dtype': _SAFETENSORS_DTYPES[np.dtype(dtype).name],
                      'shape': list(t.shape), 'data_offsets': [offset, offset + size]}
    offset += size
  encoded = json.dumps(header, separators=(',', ':')).encode()
  encoded += b' ' * (-len(encoded) % 8)  # the data starts 8-byte aligned
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(encoded)))
    f.write(encoded)
    for t in tensors:
      value = np.ascontiguousarray(t.make(), dtype=dtype)
      if value.shape != t.shape:
        raise AssertionError(f'{t.name}: planned {t.shape}, made {value.shape}')
      f.write(memoryview(value.reshape(-1).view(np.uint8)))
  os.chmod(path, _FILE_MODE)
  return offset


def save_tensors(plan: list[PlannedTensor], out_dir: epath.Path, dtype: np.dtype,
                 max_shard_bytes: int) -> list[str]:
  """Write `plan` as safetensors shards of at most `max_shard_bytes` (a tensor larger than
  that gets a shard of its own), plus the index when there are several; returns the
  file names written."""
  itemsize = np.dtype(dtype).itemsize
  shards: list[list[PlannedTensor]] = [[]]
  size = 0
  for t in plan:
    nbytes = math.prod(t.shape) * itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += nbytes
  if len(shards) == 1:
    write_safetensors(out_dir / 'model.safetensors', shards[0], dtype)
    return ['model.safetensors']
  names, weight_map, total = [], {}, 0
  for k, shard in enumerate(shards):
    name = f'model-{k + 1:05d}-of-{len(shards):05d}.safetensors'
    total += write_safetensors(out_dir / name, shard, dtype)
    names.append(name)
    weight_map.update({t.name: name for t in shard})
  index = {'metadata': {'total_size': total}, 'weight_map': weight_map}
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
