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
import ml_collections
from etils import epath

from guide_jax import config as config_lib
from guide_jax import paths, saved_model
from guide_jax.data import tokenizer as tokenizer_lib
from guide_jax.hf import checkpoint as hf_checkpoint
from guide_jax.train import checkpointing, teacher_cache


# A teacher is a saved model on the run's mesh, in teacher.dtype (saved_model.load).
Teacher = saved_model.SavedModel
TEACHER_HINT = 'point it at a workdir written by pretraining, or set teacher.pretrain'


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
    return saved_model.stored_model(cfg.teacher.checkpoint, 'teacher.checkpoint', TEACHER_HINT)
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
  ckpt, _, meta = saved_model.open_run(teacher_dir, None, 'teacher.checkpoint', TEACHER_HINT)
  ckpt.close()
  return meta.get('vocab_path', '')


def running_model(cfg: ml_collections.ConfigDict, stored: ml_collections.ConfigDict,
                  platform: str) -> ml_collections.ConfigDict:
  """The teacher as the run `cfg` runs it (saved_model.runtime_model with cfg.teacher's dtype and
  kernel), with its attention kernel checked for `platform` (ConfigError otherwise)."""
  model = saved_model.runtime_model(stored, cfg.teacher.dtype, cfg.teacher.attention_kernel)
  config_lib.validate_kernel(model, cfg.data.seq_len, platform, 'teacher model')
  return model


def load(teacher_dir: epath.Path, mesh, rules, dtype: str, attention_kernel: str = '') -> Teacher:
  """The teacher's params on `mesh` in `dtype`, from a guide_jax workdir or a Hugging Face
  directory (CheckpointError naming teacher.checkpoint when a workdir has no checkpoint,
  HFError for a refused HF model), and its model as it runs (saved_model.runtime_model)."""
  return saved_model.load(teacher_dir, mesh, rules, dtype, attention_kernel,
                          field='teacher.checkpoint', hint=TEACHER_HINT)


def from_cache(cfg: ml_collections.ConfigDict, stored: ml_collections.ConfigDict) -> Teacher:
  """The teacher of a run that reads a logits cache and never loads it: its model as it
  ran when the cache was built, and the vocabulary the cache names; no parameters."""
  manifest = teacher_cache.read_manifest(paths.workdir_path(cfg.teacher.logits_dir))
  return Teacher(model=saved_model.runtime_model(stored, cfg.teacher.dtype,
                                                 cfg.teacher.attention_kernel),
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
