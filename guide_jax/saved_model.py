"""A trained model on disk, loaded: the one path from a training run's checkpoint or a
Hugging Face directory to parameters on a mesh.

Everything that loads a model to run it goes through `load`: a run's teacher
(train/teacher.py), the sampler behind generate and lm-eval, the parity check, and export's
restore of a run. The rules for running a stored model in another dtype or with another
attention kernel are `runtime_model`, written once here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from guide_jax import config as config_lib
from guide_jax import paths, sharding
from guide_jax.data import tokenizer as tokenizer_lib
from guide_jax.hf import checkpoint as hf_checkpoint
from guide_jax.models import transformer
from guide_jax.train import checkpointing

RUN_OR_HF = 'point it at a training run\'s workdir or a Hugging Face directory'


@dataclasses.dataclass
class SavedModel:
  model: ml_collections.ConfigDict  # as it runs (runtime_model) when loaded with a dtype
  params: dict
  shardings: dict
  vocab_path: str                   # '' when it has no tokenizer
  workdir: epath.Path               # where it was loaded from
  vocab_rows: int = 0               # tokenizer size when the embedding table is padded beyond it
  meta: dict = dataclasses.field(default_factory=dict)  # a run checkpoint's metadata
  step: int | None = None           # the run's checkpoint step


def open_run(workdir: epath.Path, step: int | None = None, field: str = '--workdir',
             hint: str = RUN_OR_HF):
  """(Checkpointer, step, metadata) of a run's checkpoint `step` (default: the latest);
  CheckpointError naming `field` when the run has none or not that one."""
  ckpt_dir = workdir / 'checkpoints'
  if not ckpt_dir.is_dir():
    raise checkpointing.CheckpointError(
        f'{field}={str(workdir)!r} has no checkpoints/ directory (and no config.json of a '
        f'Hugging Face model); {hint}')
  ckpt = checkpointing.Checkpointer(ckpt_dir, 1, False)
  steps = ckpt.all_steps()
  if not steps:
    ckpt.close()
    raise checkpointing.CheckpointError(f'{field}={str(workdir)!r} holds no finished '
                                        f'checkpoint; {hint}')
  step = max(steps) if step is None else step
  if step not in steps:
    ckpt.close()
    raise checkpointing.CheckpointError(
        f'--step={step} is not among the checkpoints of {str(workdir)!r} ({steps}); pick one')
  return ckpt, step, ckpt.restore_meta(step)


def stored_model(path, field: str = '--workdir', hint: str = RUN_OR_HF
                 ) -> ml_collections.ConfigDict:
  """The model config of a saved model, read without its weights."""
  source = paths.workdir_path(path)
  if hf_checkpoint.is_hf_dir(source):
    return hf_checkpoint.model_config(source)
  ckpt, _, meta = open_run(source, None, field, hint)
  ckpt.close()
  return config_lib.complete_model(meta['model'])


def runtime_model(stored: ml_collections.ConfigDict, dtype: str,
                  attention_kernel: str = '') -> ml_collections.ConfigDict:
  """A stored model as it runs: stored and computed in `dtype` when that is bfloat16, else
  stored in float32 and computed in its own model.dtype; its attention kernel is
  `attention_kernel` when set (a checkpoint saved with 'cudnn' on a GPU can run splash on a
  TPU), else its own. The one place these rules are written: load, bench and aot use it."""
  model = ml_collections.ConfigDict(stored.to_dict())
  model.param_dtype = dtype
  model.dtype = dtype if dtype == 'bfloat16' else model.dtype
  model.attention_kernel = attention_kernel or model.attention_kernel
  return model


def one_device_mesh() -> jax.sharding.Mesh:
  return sharding.make_mesh(config_lib.base_config().mesh, jax.local_devices()[:1])


def load(path, mesh: jax.sharding.Mesh | None = None, rules=sharding.DEFAULT_RULES,
         dtype: str | None = None, attention_kernel: str = '', step: int | None = None,
         field: str = '--workdir', hint: str = RUN_OR_HF) -> SavedModel:
  """The model at `path` (a run's workdir: its checkpoint `step`, default the latest; or a
  Hugging Face directory) with its parameters on `mesh` (default: one local device).

  With `dtype`, the model is runtime_model(stored, dtype, attention_kernel) and its
  parameters are stored in `dtype`; without, both are as saved. Errors name `field`:
  CheckpointError for a run without the checkpoint, HFError for a refused HF model."""
  source = paths.workdir_path(path)
  mesh = mesh or one_device_mesh()
  if hf_checkpoint.is_hf_dir(source):
    stored, meta, ckpt = hf_checkpoint.model_config(source), {}, None
  else:
    ckpt, step, meta = open_run(source, step, field, hint)
    stored = config_lib.complete_model(meta['model'])
  model = runtime_model(stored, dtype, attention_kernel) if dtype else stored
  abstract, shardings = transformer.abstract_params_and_shardings(stored, mesh, rules)
  if ckpt is None:
    params = hf_checkpoint.load_params(source, model, abstract, shardings, model.param_dtype)
    return _with_hf_tokenizer(SavedModel(model, params, shardings, '', source), source)
  params = ckpt.restore_params(step, sharding.abstract(abstract, shardings))
  ckpt.close()
  if model.param_dtype != stored.param_dtype:
    params = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(jnp.dtype(model.param_dtype)),
                                            p), out_shardings=shardings)(params)
  return SavedModel(model, params, shardings, meta.get('vocab_path', ''), source, meta=meta,
                    step=step)


def _with_hf_tokenizer(saved: SavedModel, hf_dir: epath.Path) -> SavedModel:
  """An HF model's tokenizer.json, when it has one; a table padded beyond the tokenizer
  (Qwen) records how many rows the tokenizer can produce."""
  tokenizer = hf_dir / 'tokenizer.json'
  if not tokenizer.exists():
    return saved
  rows = tokenizer_lib.load(str(tokenizer)).size
  if rows > saved.model.vocab_size:
    raise config_lib.ConfigError(
        f'{tokenizer} has {rows} tokens, more than the model\'s vocab_size '
        f'{saved.model.vocab_size} in config.json; the checkpoint and tokenizer do not match')
  return dataclasses.replace(saved, vocab_path=str(tokenizer),
                             vocab_rows=rows if rows < saved.model.vocab_size else 0)
