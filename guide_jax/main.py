"""Entry point: python -m guide_jax.main --config=experiments/FILE.py[:args] --workdir=DIR.

Any config field can be overridden on the command line (--config.train.steps=10).
A config that cannot work, or a missing/unreadable checkpoint, prints one line naming
the problem and exits with status 2; nothing already on disk is changed.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
  from guide_jax import config as config_lib
  from guide_jax.train import checkpointing, trainer
  try:
    trainer.train(_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, checkpointing.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
