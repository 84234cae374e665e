"""A guide_jax run as a Hugging Face directory that transformers loads.

`export_run(workdir, out)` reads one checkpoint's parameters (leaf by leaf: the model is
never whole in host memory) and metadata and writes
config.json, generation_config.json, model.safetensors (sharded with an index above
`max_shard_bytes`) and the tokenizer files. The family is the model's own
(`model.family`, set for students of imported teachers) or the one its architecture
matches; a model no family can express is refused naming the field. Everything is
written into a temporary sibling directory that is renamed into place at the end, so
a failed export leaves nothing behind and an existing directory is never touched.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from guide_jax import config as config_lib
from guide_jax import paths, saved_model
from guide_jax.data import tokenizer as tokenizer_lib
from guide_jax.hf import checkpoint as hf_checkpoint
from guide_jax.hf import families
from guide_jax.models import transformer
from guide_jax.train import checkpointing

ConfigError = config_lib.ConfigError


def _one_device_abstract(model):
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return device, jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
      transformer.abstract_params(model))


def _special_ids(meta: dict) -> dict:
  """bos/eos/pad token ids: the HF teacher's own, else the run's vocabulary's."""
  vocab_path = meta.get('vocab_path', '')
  source = os.path.dirname(vocab_path) if vocab_path else ''
  if source and os.path.isfile(os.path.join(source, 'config.json')):
    with open(os.path.join(source, 'config.json')) as f:
      hf = json.load(f)
    return {k: hf.get(k) for k in ('bos_token_id', 'eos_token_id', 'pad_token_id')}
  if vocab_path and tokenizer_lib.is_hf_tokenizer(vocab_path):
    return {'bos_token_id': None, 'eos_token_id': tokenizer_lib.load(vocab_path).eos_id,
            'pad_token_id': None}
  return {'bos_token_id': None, 'eos_token_id': tokenizer_lib.EOS_ID,
          'pad_token_id': tokenizer_lib.PAD_ID}


def _write_tokenizer(meta: dict, out: epath.Path) -> list[str]:
  """The run's tokenizer files: an HF tokenizer's folder, or the SentencePiece model as a
  T5-convention `tokenizer.model` (pad 0, eos 1, unk 2, no extra ids)."""
  vocab_path = meta.get('vocab_path', '')
  if not vocab_path:
    return []
  if tokenizer_lib.is_hf_tokenizer(vocab_path):
    return hf_checkpoint.copy_tokenizer(epath.Path(os.path.dirname(vocab_path)), out)
  shutil.copyfile(vocab_path, out / 'tokenizer.model')
  (out / 'tokenizer_config.json').write_text(json.dumps({
      'tokenizer_class': 'T5Tokenizer', 'extra_ids': 0, 'eos_token': '</s>',
      'pad_token': '<pad>', 'unk_token': '<unk>', 'legacy': True}, indent=2))
  return ['tokenizer.model', 'tokenizer_config.json']


def write_hf_dir(model: ml_collections.ConfigDict, params: dict | Callable, out: epath.Path,
                 special_ids: dict, dtype: str, max_shard_bytes: int) -> list[str]:
  """config.json, generation_config.json and safetensors into `out`. `params` is the
  parameter tree, or a function from a leaf's path to the leaf (read on demand)."""
  family = families.export_family(model)
  target = np.dtype(jnp.dtype(dtype))
  read = params if callable(params) else functools.partial(hf_checkpoint.get_path, params)
  # The last few leaves read stay at hand: a fused tensor (GPT-2's c_attn) takes three
  # per layer, every other tensor one, and layers of one leaf are written in a row.
  read = functools.lru_cache(maxsize=3)(read)
  abstract = transformer.abstract_params(model)

  def leaf(path, layer):
    value = read(path)
    return np.asarray(jax.device_get(value if layer is None else value[layer])).astype(
        target, copy=False)

  def leaf_shape(path):
    shape = hf_checkpoint.get_path(abstract, path).shape
    return shape[1:] if path[0] == 'blocks' else shape

  plan = hf_checkpoint.export_plan(model, leaf, leaf_shape, family)
  files = hf_checkpoint.save_tensors(plan, out, target, max_shard_bytes)
  hf_config = {**family.hf_config(model), **special_ids, 'dtype': dtype, 'use_cache': True}
  (out / 'config.json').write_text(json.dumps(hf_config, indent=2))
  generation = {k: v for k, v in special_ids.items() if v is not None}
  (out / 'generation_config.json').write_text(json.dumps(generation, indent=2))
  return files + ['config.json', 'generation_config.json']


def export_run(workdir, out_dir, step: int | None = None, dtype: str = '',
               max_shard_bytes: int = 2 << 30) -> dict:
  """Export a run's checkpoint to `out_dir` (which must not exist or be empty)."""
  out = epath.Path(out_dir)
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise ConfigError(f'--out={str(out)!r} exists and is not an empty directory; choose a new '
                      f'one (nothing is overwritten)')
  if dtype not in ('', 'float32', 'bfloat16'):
    raise ConfigError(f"--dtype={dtype!r} must be 'float32' or 'bfloat16'")
  ckpt, step, meta = saved_model.open_run(paths.workdir_path(workdir), step,
                                          hint='point it at a training run')
  ckpt.close()
  model = config_lib.complete_model(meta['model'])
  family = families.export_family(model)  # refuse before writing anything
  device, abstract = _one_device_abstract(model)
  reader = checkpointing.LeafReader(paths.workdir_path(workdir) / 'checkpoints', step,
                                    abstract, device)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = epath.Path(tempfile.mkdtemp(dir=out.parent, prefix=f'.{out.name}.partial-'))
  try:
    files = write_hf_dir(model, reader.read, tmp, _special_ids(meta),
                         dtype or model.param_dtype, max_shard_bytes)
    files += _write_tokenizer(meta, tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; an export is for sharing
    if out.exists():
      out.rmdir()  # empty, checked above
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  finally:
    reader.close()
  return {'out': str(out), 'step': step, 'family': family.name,
          'files': sorted(files)}
