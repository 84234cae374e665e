"""A run's checkpoint evaluated on its own data config's eval batches: eval/loss (nats per
token) and eval/bits_per_byte, as the trainer would log them at that step; and, when the
run set loss.on_policy.new_tokens and has a teacher, eval/on_policy_kl and
eval/sample_teacher_nll (train/on_policy.py: the same prompts and key as the trainer's)."""

from __future__ import annotations

import json

import jax
import ml_collections
from etils import epath

from guide_jax import config as config_lib
from guide_jax import losses, paths, saved_model, sharding
from guide_jax.data import pipeline
from guide_jax.infer import sampler as sampler_lib
from guide_jax.train import metrics as metrics_lib
from guide_jax.train import on_policy, steps, trainer


def evaluate_run(workdir: epath.Path, loaded: sampler_lib.LoadedModel,
                 teacher: str = '') -> dict[str, float]:
  """{} for an HF directory or a run on synthetic/seqio data (no bytes to count).
  `teacher`: the model that grades the student's samples ('' = the run's own teacher)."""
  config_path = workdir / 'config.json'  # an HF directory has one too, but no checkpoints/
  if not (workdir / 'checkpoints').is_dir() or not config_path.exists():
    return {}
  cfg = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  if cfg.data.backend not in ('embedded', 'files'):
    return {}
  cfg.data.tokenizer = loaded.vocab.path  # a student's is its teacher's, resolved at training
  data = pipeline.build(cfg)
  mesh, rules = loaded.sampler.mesh, loaded.sampler.rules
  step = jax.jit(steps.make_eval_step(steps.lm_objective(loaded.model, 0.0, 0)))
  with jax.set_mesh(mesh), sharding.use_rules(rules):
    scores = trainer.evaluate(step, loaded.params, data.eval_batches, mesh, rules)
    out = {k: scores[k] for k in (metrics_lib.EVAL_LOSS, metrics_lib.EVAL_BPB) if k in scores}
    teacher = teacher or _run_teacher(cfg, workdir)
    if cfg.loss.get('on_policy', {}).get('new_tokens') and teacher:
      out.update(_on_policy_scores(cfg, loaded, teacher, data.eval_batches, mesh, rules))
  return out


def _run_teacher(cfg, workdir: epath.Path) -> str:
  """The teacher a run distilled from, '' when it had none (or a logits cache only)."""
  if cfg.teacher.get('checkpoint'):
    return cfg.teacher.checkpoint
  return str(workdir / 'teacher') if cfg.teacher.get('pretrain') else ''


def _on_policy_scores(cfg, loaded, teacher_path: str, eval_batches, mesh, rules):
  """The trainer's on-policy evaluation of the loaded student, graded by the teacher."""
  full = config_lib.base_config()  # fields a run's config.json predates, at their defaults
  full.loss.on_policy.update(cfg.loss.on_policy.to_dict())
  full.data.seq_len, full.model = cfg.data.seq_len, loaded.model
  teacher = saved_model.load(paths.workdir_path(teacher_path), mesh, rules,
                             cfg.teacher.get('dtype', 'float32'), field='--teacher')
  chunk_len = losses.resolve_chunk_len(cfg.loss.get('chunk_len', 0), cfg.data.seq_len)
  step = jax.jit(on_policy.make_eval_step(full, teacher.model, loaded.vocab.eos_id, chunk_len))
  return on_policy.evaluate(step, loaded.params, eval_batches, teacher.params,
                            full.loss.on_policy, mesh, rules)
