"""Entry point: python -m guide_jax.main --config=experiments/FILE.py[:args] --workdir=DIR.

Any config field can be overridden on the command line (--config.train.steps=10).
A config that cannot work, or a missing/unreadable checkpoint, prints one line naming
the problem and exits with status 2; nothing already on disk is changed.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from guide_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and metrics.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv

  def body():
    from guide_jax.train import trainer
    trainer.train(cli.config_value(_CONFIG), _WORKDIR.value)

  cli.run(body)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
