"""The frozen teacher: found (or pretrained) once, loaded onto the student's mesh.

A teacher is a workdir written by this framework's pretraining mode. Its model config
and vocabulary file are read from its checkpoint metadata; its parameters are restored
directly onto the mesh with their own logical shardings (each device reads its shard),
optionally cast to bfloat16. It gets no optimizer state and is never written into the
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
from guide_jax.models import transformer
from guide_jax.train import checkpointing


@dataclasses.dataclass
class Teacher:
  model: ml_collections.ConfigDict
  params: dict
  shardings: dict
  vocab_path: str
  workdir: epath.Path


def is_distillation(cfg: ml_collections.ConfigDict) -> bool:
  return bool(cfg.teacher.checkpoint) or bool(cfg.teacher.pretrain)


def model_config(cfg: ml_collections.ConfigDict, experiment=None) -> ml_collections.ConfigDict:
  """The teacher's architecture without loading it (benchmarks, AOT): teacher.pretrain's
  model, else the one saved with teacher.checkpoint, else the experiment module's
  teacher_config() (the paper configs name their teacher that way)."""
  if cfg.teacher.pretrain:
    return cfg.teacher.pretrain.model
  if cfg.teacher.checkpoint:
    ckpt, step = _latest_checkpoint(paths.workdir_path(cfg.teacher.checkpoint))
    meta = ckpt.restore_meta(step)
    ckpt.close()
    return ml_collections.ConfigDict(meta['model'])
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


def load(teacher_dir: epath.Path, mesh, rules, dtype: str) -> Teacher:
  """Restore the teacher's params onto `mesh` (raises CheckpointError when missing)."""
  ckpt, step = _latest_checkpoint(teacher_dir)
  meta = ckpt.restore_meta(step)
  model = ml_collections.ConfigDict(meta['model'])
  model.param_dtype = dtype
  model.dtype = dtype if dtype == 'bfloat16' else model.dtype
  stored = ml_collections.ConfigDict(meta['model'])
  abstract, shardings = transformer.abstract_params_and_shardings(stored, mesh, rules)
  params = ckpt.restore_params(step, sharding.abstract(abstract, shardings))
  ckpt.close()
  if dtype != stored.param_dtype:
    params = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(jnp.dtype(dtype)), p),
                     out_shardings=shardings)(params)
  return Teacher(model=model, params=params, shardings=shardings,
                 vocab_path=meta.get('vocab_path', ''), workdir=teacher_dir)


def check_vocabulary(cfg: ml_collections.ConfigDict, teacher: Teacher) -> None:
  """The student reads the teacher's vocabulary file; a different one is an error."""
  if not cfg.data.tokenizer:
    cfg.data.tokenizer = teacher.vocab_path
  elif teacher.vocab_path and cfg.data.tokenizer != teacher.vocab_path:
    mine = tokenizer_lib.Vocabulary(cfg.data.tokenizer).fingerprint
    theirs = tokenizer_lib.Vocabulary(teacher.vocab_path).fingerprint
    if mine != theirs:
      raise config_lib.ConfigError(
          f'data.tokenizer={cfg.data.tokenizer!r} differs from the teacher\'s vocabulary '
          f'{teacher.vocab_path!r}; leave data.tokenizer empty to use the teacher\'s')
  if cfg.model.vocab_size != teacher.model.vocab_size:
    raise config_lib.ConfigError(
        f'model.vocab_size={cfg.model.vocab_size} differs from the teacher\'s '
        f'{teacher.model.vocab_size}; they must share the tokenizer')
