"""A run's checkpoint evaluated on its own data config's eval batches: eval/loss (nats per
token) and eval/bits_per_byte, as the trainer would log them at that step."""

from __future__ import annotations

import json

import jax
import ml_collections
from etils import epath

from guide_jax import sharding
from guide_jax.data import pipeline
from guide_jax.infer import sampler as sampler_lib
from guide_jax.train import metrics as metrics_lib
from guide_jax.train import steps, trainer


def evaluate_run(workdir: epath.Path, loaded: sampler_lib.LoadedModel) -> dict[str, float]:
  """{} for an HF directory or a run on synthetic/seqio data (no bytes to count)."""
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
  return {k: scores[k] for k in (metrics_lib.EVAL_LOSS, metrics_lib.EVAL_BPB) if k in scores}
