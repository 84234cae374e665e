"""One process of a multi-process teacher-logits cache build (test_teacher_cache starts it).

argv: PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS TEACHER_DIR OUT_DIR
Builds the cache of experiments/guide_tiny.py's student (8 steps, k = 16, one step a file)
from TEACHER_DIR with gloo CPU collectives.
"""

import os
import sys

pid, nproc, port, ndev = (int(x) for x in sys.argv[1:5])
teacher_dir, out_dir = sys.argv[5], sys.argv[6]

import jax  # noqa: E402

jax.config.update('jax_platforms', 'cpu')
jax.config.update('jax_num_cpu_devices', ndev)
if nproc > 1:
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from guide_jax import config as config_lib  # noqa: E402
from guide_jax import teacher_logits  # noqa: E402
from guide_jax.train import teacher_cache  # noqa: E402

teacher_cache.FILE_BYTES = 1  # one step a file, as in test_teacher_cache's own build
config = config_lib.load_experiment_module('guide_tiny').get_config()
config.teacher.pretrain = type(config.teacher.pretrain)()
config.teacher.checkpoint = teacher_dir
config.train.update(dict(steps=8, warmup_steps=2, progress_bar=False))
if nproc > 1:
  config.distributed.update(dict(initialize='always', coordinator_address=f'localhost:{port}',
                                 num_processes=nproc, process_id=pid))
teacher_logits.build(config, out_dir, top_k=16, log=lambda *_: None)
