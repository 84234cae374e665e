"""One process of a multi-process CPU run (tests/test_multiprocess.py starts it).

argv: PROCESS_ID NUM_PROCESSES PORT DEVICES_PER_PROCESS WORKDIR OUT_JSON [INTERRUPT_AT]
Trains experiments/guide_tiny.py (teacher, then GUIDE+KD student) with gloo CPU
collectives, and writes which training rows this process read. With GUIDE_LOCAL_TIER=DIR
in the environment, the student also keeps a local checkpoint tier there, every step.
"""

import json
import os
import sys

pid, nproc, port, ndev = (int(x) for x in sys.argv[1:5])
workdir, out_path = sys.argv[5], sys.argv[6]
interrupt_at = int(sys.argv[7]) if len(sys.argv) > 7 else None

import jax  # noqa: E402

jax.config.update('jax_platforms', 'cpu')
jax.config.update('jax_num_cpu_devices', ndev)
if nproc > 1:
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from guide_jax import config as config_lib  # noqa: E402
from guide_jax.data import pipeline  # noqa: E402
from guide_jax.train import trainer  # noqa: E402

rows_read = []
_batch_at = pipeline.BatchIterator.batch_at


def _recording_batch_at(self, step):
  batch = _batch_at(self, step)
  if any(getattr(s, 'shuffle', False) for s in self.sources):  # training, not eval
    rows_read.append([step, self.process_index, batch['inputs'][:, :8].tolist()])
  return batch


pipeline.BatchIterator.batch_at = _recording_batch_at


def tiny(c):
  c.train.update(dict(steps=6, warmup_steps=1, log_every=1, eval_every=3, checkpoint_every=3,
                      progress_bar=False, async_checkpoints=False, peak_flops=1e11))
  c.data.global_batch_size = 8
  return c


config = tiny(config_lib.load_experiment_module('guide_tiny').get_config())
tiny(config.teacher.pretrain)
if os.environ.get('GUIDE_LOCAL_TIER'):
  config.train.local_checkpoint_dir = os.environ['GUIDE_LOCAL_TIER']
  config.train.local_checkpoint_every = 1
config.teacher.pretrain.train.steps = 4
if nproc > 1:
  for c in (config, config.teacher.pretrain):
    c.distributed.update(dict(initialize='always', coordinator_address=f'localhost:{port}',
                              num_processes=nproc, process_id=pid))
result = trainer.train(config, workdir, interrupt_at_step=interrupt_at)
with open(out_path, 'w') as f:
  json.dump({'process_index': jax.process_index(), 'process_count': jax.process_count(),
             'devices': jax.device_count(), 'step': result['step'],
             'eval_loss': result.get('eval/loss'), 'rows': rows_read}, f)
