"""GUIDE+KD at the paper's smaller student size: a ~0.4B student from the ~3.4B teacher.

  python -m guide_jax.main --config=experiments/guide_400m.py --workdir=gs://BUCKET/guide_400m \
      --config.teacher.checkpoint=gs://BUCKET/teacher_3b

Same family, data and mesh as guide_1b.py (see there); for a TPU pod slice.
"""

import importlib.util
import os


def _guide_1b():
  spec = importlib.util.spec_from_file_location(
      'guide_1b', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'guide_1b.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  family = _guide_1b()
  c = family.get_config()
  c.model.update(dict(d_model=1024, n_layers=24, n_heads=8, n_kv_heads=8, head_dim=128,
                      mlp_dim=4096))  # ~0.34B in blocks + 33M embedding
  return c


def teacher_config():
  return _guide_1b().teacher_config()
