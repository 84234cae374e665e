"""The paper-size configs validate and build abstractly (running them is for a TPU)."""

import jax
import pytest

from guide_jax import config as config_lib
from guide_jax import guide
from guide_jax.models import transformer

_module = config_lib.load_experiment_module


@pytest.mark.parametrize('name,low,high,chips', [('guide_400m', 0.33e9, 0.45e9, 256),
                                                 ('guide_1b', 0.9e9, 1.15e9, 256),
                                                 ('guide_1b_8k', 0.9e9, 1.15e9, 128)])
def test_paper_config_validates_and_builds(name, low, high, chips):
  """On `chips` TPU chips (guide_1b_8k's 128 rows: at most 128 batch shards)."""
  module = _module(name)
  student, teacher = module.get_config(), module.teacher_config()
  config_lib.validate(student, num_devices=chips, platform='tpu')
  config_lib.validate(teacher, num_devices=chips, platform='tpu')
  guide.check_compatible(teacher.model, student.model, student.guide)
  s_params = jax.eval_shape(lambda: transformer.init_params(student.model, jax.random.key(0)))
  t_params = jax.eval_shape(lambda: transformer.init_params(teacher.model, jax.random.key(0)))
  n_student, n_teacher = transformer.count_params(s_params), transformer.count_params(t_params)
  assert low < n_student < high
  assert n_teacher > 3 * n_student
  guided, diag = jax.eval_shape(lambda p: guide.project(p, teacher.model, student.model,
                                                        student.guide), t_params)
  assert guided['embedding'].shape == s_params['embedding'].shape
  assert diag['projection'].shape == (teacher.model.d_model, student.model.d_model)


def test_70b_teacher_8b_student_config_spans_two_slices():
  """Llama-3.1-70B and -8B shapes; 2 slices of 64 chips over DCN (and 1 for `:cached`)."""
  module = _module('guide_70b_8b')
  student, teacher = module.get_config(), module.teacher_config()
  student.data.train_files = teacher.data.train_files = 'gs://b/x.jsonl'
  config_lib.validate(student, num_devices=128, platform='tpu', num_slices=2)
  config_lib.validate(teacher, num_devices=128, platform='tpu', num_slices=2)
  config_lib.validate(student, num_devices=64, platform='tpu')
  guide.check_compatible(teacher.model, student.model, student.guide)
  count = lambda m: transformer.count_params(
      jax.eval_shape(lambda: transformer.init_params(m, jax.random.key(0))))
  assert 69e9 < count(teacher.model) < 72e9 and 7.9e9 < count(student.model) < 8.2e9
  cached = module.get_config('cached')
  assert cached.teacher.logits_dir == '' and cached.topology == student.topology
  with pytest.raises(config_lib.ConfigError, match="the only variant is 'cached'"):
    module.get_config('other')
