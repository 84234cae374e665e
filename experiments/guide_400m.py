"""GUIDE+KD at the paper's smaller student size: a ~0.4B student from the ~3.4B teacher.

  python -m guide_jax.main --config=experiments/guide_400m.py --workdir=gs://BUCKET/guide_400m \
      --config.teacher.checkpoint=gs://BUCKET/teacher_3b

Same family, data and mesh as guide_1b.py (see there); for a TPU pod slice.

  python -m guide_jax.main --config=experiments/guide_400m.py:runlocal --workdir=/tmp/guide_400m_local

`runlocal`: this student and its teacher shrunk as guide_1b.py's `runlocal` does (widths
/32, heads /4, depth /8), on the embedded corpus, about a minute on 2 CPU cores.
"""

from guide_jax import config as config_lib


# The MLP recomputed in the backward (see get_config), for the student and its teacher.
REMAT = 'save_dot_except_mlp'


def _guide_1b():
  return config_lib.load_experiment_module('guide_1b')


def get_config(arg: str = ''):
  if arg not in ('', 'runlocal'):
    raise config_lib.ConfigError(f"experiments/guide_400m.py:{arg}: the only variant is "
                                 f"'runlocal'")
  family = _guide_1b()
  c = family.get_config()
  c.model.update(dict(d_model=1024, n_layers=24, n_heads=8, n_kv_heads=8, head_dim=128,
                      mlp_dim=4096))  # ~0.34B in blocks + 33M embedding
  # With splash attention on TPU (model.attention_kernel='auto') and the MLP recomputed in
  # the backward, the GUIDE+KD step holds 33.3 of 95 GiB per chip on 16 v5p chips (57.3 GiB
  # with 'dots', 64.3 with xla attention and 'dots'; benchmarks/README.md, "Fused attention
  # kernels"). It also fits 8 chips (v5p:2x2x2: 66.3 GiB), where each chip does twice the
  # rows: choose by the chips you have (python -m guide_jax.aot --topology=...).
  c.model.remat = REMAT
  c.topology = 'v5p:2x2x4'
  return family.runlocal(c, teacher_config()) if arg == 'runlocal' else c


def teacher_config():
  """guide_1b's teacher with this config's remat (which matters only where the teacher is
  trained, as in runlocal: a frozen teacher's forward keeps nothing for a backward)."""
  c = _guide_1b().teacher_config()
  c.model.remat = REMAT
  return c
