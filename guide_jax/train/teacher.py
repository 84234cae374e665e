"""The frozen teacher: found (or pretrained) once, loaded onto the student's mesh.

A teacher is either a workdir written by this framework's pretraining mode (model config
and vocabulary file read from its checkpoint metadata, parameters restored by orbax) or a
Hugging Face directory (config.json mapped by guide_jax.hf.families, safetensors read
tensor by tensor by guide_jax.hf.checkpoint, tokenizer.json as the vocabulary). Either
way its parameters land directly on the mesh with their own logical shardings,
optionally in bfloat16. It gets no optimizer state and is never written into the
student's checkpoints: it is reloaded at every (re)start.
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
from guide_jax.train import checkpointing, teacher_cache


@dataclasses.dataclass
class Teacher:
  model: ml_collections.ConfigDict
  params: dict
  shardings: dict
  vocab_path: str
  workdir: epath.Path
  vocab_rows: int = 0   # tokenizer size when the embedding table is padded beyond it


def is_distillation(cfg: ml_collections.ConfigDict) -> bool:
  return bool(cfg.teacher.checkpoint or cfg.teacher.pretrain or cfg.teacher.logits_dir)


def needs_params(cfg: ml_collections.ConfigDict) -> bool:
  """Whether a distillation run loads the teacher's parameters: always when it runs the
  teacher, and with a logits cache only when GUIDE projects them (init or MATCH)."""
  if not cfg.teacher.logits_dir:
    return True
  return cfg.guide.init != 'none' or cfg.loss.match.value > 0 or cfg.loss.match.end_value > 0


def model_config(cfg: ml_collections.ConfigDict, experiment=None) -> ml_collections.ConfigDict:
  """The teacher's architecture without loading it (benchmarks, AOT): teacher.pretrain's
  model, else the one saved with teacher.checkpoint, else the experiment module's
  teacher_config() (the paper configs name their teacher that way)."""
  if cfg.teacher.pretrain:
    return cfg.teacher.pretrain.model
  if cfg.teacher.checkpoint:
    source = paths.workdir_path(cfg.teacher.checkpoint)
    if hf_checkpoint.is_hf_dir(source):
      return hf_checkpoint.model_config(source)
    ckpt, step = _latest_checkpoint(source)
    meta = ckpt.restore_meta(step)
    ckpt.close()
    return config_lib.complete_model(meta['model'])
  if cfg.teacher.logits_dir:  # the cache's manifest names the teacher it was made from
    manifest = teacher_cache.read_manifest(paths.workdir_path(cfg.teacher.logits_dir))
    return config_lib.complete_model(manifest['teacher']['model'])
  if experiment is not None and hasattr(experiment, 'teacher_config'):
    return experiment.teacher_config().model
  raise ValueError('the config names no teacher (teacher.pretrain or teacher.checkpoint, '
                   'or teacher_config() in its file); this needs a distillation config')


def ensure_trained(cfg: ml_collections.ConfigDict, workdir: epath.Path, train_fn) -> epath.Path:
  """The teacher's workdir; with teacher.pretrain, train it first if it is not finished."""
  if cfg.teacher.checkpoint:
    return paths.workdir_path(cfg.teacher.checkpoint)
  teacher_dir = workdir / 'teacher'
  pre = cfg.teacher.pretrain
  latest = checkpointing.Checkpointer(teacher_dir / 'checkpoints', 1, False).latest_step() \
      if (teacher_dir / 'checkpoints').exists() else None
  if latest is None or latest < pre.train.steps:
    train_fn(pre, teacher_dir)  # resumes a partially trained teacher
  return teacher_dir


def vocab_path(cfg: ml_collections.ConfigDict, workdir: epath.Path) -> str | None:
  """The teacher's vocabulary file, read without its weights ('' when it has none, None
  when the teacher is still to be pretrained into WORKDIR/teacher)."""
  if cfg.teacher.logits_dir and not cfg.teacher.checkpoint:
    manifest = teacher_cache.read_manifest(paths.workdir_path(cfg.teacher.logits_dir))
    return manifest['tokenizer']['path']
  if cfg.teacher.checkpoint:
    teacher_dir = paths.workdir_path(cfg.teacher.checkpoint)
    if hf_checkpoint.is_hf_dir(teacher_dir):
      tokenizer = teacher_dir / 'tokenizer.json'
      return str(tokenizer) if tokenizer.exists() else ''
  else:
    teacher_dir = workdir / 'teacher'
    if not (teacher_dir / 'checkpoints').exists():
      return None
  ckpt, step = _latest_checkpoint(teacher_dir)
  path = ckpt.restore_meta(step).get('vocab_path', '')
  ckpt.close()
  return path


def _latest_checkpoint(teacher_dir: epath.Path):
  """(Checkpointer, latest step) of a teacher's workdir; CheckpointError when it has none."""
  ckpt_dir = teacher_dir / 'checkpoints'
  if not ckpt_dir.is_dir():
    raise checkpointing.CheckpointError(
        f'teacher.checkpoint={str(teacher_dir)!r} has no checkpoints/ directory; point it '
        f'at a workdir written by pretraining, or set teacher.pretrain')
  ckpt = checkpointing.Checkpointer(ckpt_dir, 1, False)
  step = ckpt.latest_step()
  if step is None:
    raise checkpointing.CheckpointError(
        f'teacher.checkpoint={str(teacher_dir)!r} holds no finished checkpoint')
  return ckpt, step


def runtime_model(stored: ml_collections.ConfigDict, dtype: str,
                  attention_kernel: str = '') -> ml_collections.ConfigDict:
  """The teacher as it runs: stored and computed in `teacher.dtype` when that is bfloat16,
  else stored in float32 and computed in its own model.dtype; its attention kernel is
  `teacher.attention_kernel` when set (a checkpoint saved with 'cudnn' on a GPU can run
  splash on a TPU), else its own. The one place these rules are written: trainer (through
  load), bench and aot all use it."""
  model = ml_collections.ConfigDict(stored.to_dict())
  model.param_dtype = dtype
  model.dtype = dtype if dtype == 'bfloat16' else model.dtype
  model.attention_kernel = attention_kernel or model.attention_kernel
  return model


def running_model(cfg: ml_collections.ConfigDict, stored: ml_collections.ConfigDict,
                  platform: str) -> ml_collections.ConfigDict:
  """The teacher as the run `cfg` runs it (runtime_model with cfg.teacher's dtype and
  kernel), with its attention kernel checked for `platform` (ConfigError otherwise)."""
  model = runtime_model(stored, cfg.teacher.dtype, cfg.teacher.attention_kernel)
  config_lib.validate_kernel(model, cfg.data.seq_len, platform, 'teacher model')
  return model


def load(teacher_dir: epath.Path, mesh, rules, dtype: str, attention_kernel: str = '') -> Teacher:
  """The teacher's params on `mesh`, from a guide_jax workdir or a Hugging Face directory
  (CheckpointError when a workdir has no checkpoint, HFError for a refused HF model), and
  its model as it runs (runtime_model)."""
  if hf_checkpoint.is_hf_dir(teacher_dir):
    return load_hf(teacher_dir, mesh, rules, dtype, attention_kernel)
  ckpt, step = _latest_checkpoint(teacher_dir)
  meta = ckpt.restore_meta(step)
  stored = config_lib.complete_model(meta['model'])
  model = runtime_model(stored, dtype, attention_kernel)
  abstract, shardings = transformer.abstract_params_and_shardings(stored, mesh, rules)
  params = ckpt.restore_params(step, sharding.abstract(abstract, shardings))
  ckpt.close()
  if dtype != stored.param_dtype:
    params = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), p),
                     out_shardings=shardings)(params)
  return Teacher(model=model, params=params, shardings=shardings,
                 vocab_path=meta.get('vocab_path', ''), workdir=teacher_dir)


def load_hf(hf_dir: epath.Path, mesh, rules, dtype: str, attention_kernel: str = '') -> Teacher:
  """A Hugging Face teacher: config.json -> model config, safetensors -> sharded params."""
  model = runtime_model(hf_checkpoint.model_config(hf_dir), dtype, attention_kernel)
  abstract, shardings = transformer.abstract_params_and_shardings(model, mesh, rules)
  params = hf_checkpoint.load_params(hf_dir, model, abstract, shardings, dtype)
  vocab_path, vocab_rows = '', 0
  if (hf_dir / 'tokenizer.json').exists():
    vocab_path = str(hf_dir / 'tokenizer.json')
    vocab_rows = tokenizer_lib.load(vocab_path).size
    if vocab_rows > model.vocab_size:
      raise config_lib.ConfigError(
          f'{vocab_path} has {vocab_rows} tokens, more than the teacher\'s vocab_size '
          f'{model.vocab_size} in config.json; the checkpoint and tokenizer do not match')
  return Teacher(model=model, params=params, shardings=shardings, vocab_path=vocab_path,
                 workdir=hf_dir, vocab_rows=vocab_rows if vocab_rows < model.vocab_size else 0)


def from_cache(cfg: ml_collections.ConfigDict, stored: ml_collections.ConfigDict) -> Teacher:
  """The teacher of a run that reads a logits cache and never loads it: its model as it
  ran when the cache was built, and the vocabulary the cache names; no parameters."""
  manifest = teacher_cache.read_manifest(paths.workdir_path(cfg.teacher.logits_dir))
  return Teacher(model=runtime_model(stored, cfg.teacher.dtype, cfg.teacher.attention_kernel),
                 params={}, shardings={}, vocab_path=manifest['tokenizer']['path'],
                 workdir=epath.Path(manifest['teacher']['checkpoint']))


def without_params(teacher: Teacher) -> Teacher:
  """`teacher` with its parameters deleted from the devices (a cached run keeps only what
  GUIDE projected from them)."""
  for x in jax.tree.leaves(teacher.params):
    x.delete()
  return dataclasses.replace(teacher, params={}, shardings={})


def check_vocabulary(cfg: ml_collections.ConfigDict, teacher: Teacher) -> None:
  """The student reads the teacher's vocabulary file; a different one is an error."""
  if not cfg.data.tokenizer:
    cfg.data.tokenizer = teacher.vocab_path
    if cfg.data.backend == 'seqio' and tokenizer_lib.is_hf_tokenizer(teacher.vocab_path):
      raise config_lib.ConfigError(
          f'the teacher\'s tokenizer {teacher.vocab_path!r} is a Hugging Face tokenizer, '
          f'which the seqio backend cannot read; use data.backend=embedded')
  elif teacher.vocab_path and cfg.data.tokenizer != teacher.vocab_path:
    mine = tokenizer_lib.load(cfg.data.tokenizer).fingerprint
    theirs = tokenizer_lib.load(teacher.vocab_path).fingerprint
    if mine != theirs:
      raise config_lib.ConfigError(
          f'data.tokenizer={cfg.data.tokenizer!r} differs from the teacher\'s vocabulary '
          f'{teacher.vocab_path!r}; leave data.tokenizer empty to use the teacher\'s')
  if cfg.model.vocab_size != teacher.model.vocab_size:
    raise config_lib.ConfigError(
        f'model.vocab_size={cfg.model.vocab_size} differs from the teacher\'s '
        f'{teacher.model.vocab_size}; they must share the tokenizer')


def check_sequence(cfg: ml_collections.ConfigDict, teacher: Teacher) -> None:
  """The teacher must see the student's whole sequence as it was trained to."""
  if cfg.data.seq_len > teacher.model.max_len:
    raise config_lib.ConfigError(
        f'data.seq_len={cfg.data.seq_len} exceeds the teacher\'s max_len='
        f'{teacher.model.max_len}; lower data.seq_len')
