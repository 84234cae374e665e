"""python -m guide_jax.prepare --config=CFG [--workdir=RUN]

Builds what training reads before training starts: the tokenizer (trained on the train
files when the config names none, or the teacher's for a student) and the pre-tokenized
cache of every source, in parallel over the cores with a progress bar. A killed run
resumes with the shards it finished; the finished cache appears atomically. Prints one
JSON line per config prepared. Training builds a missing cache itself; this does it ahead
(on a CPU host, before the accelerators are allocated).

With a teacher still to be pretrained into WORKDIR/teacher, the teacher's own data
(teacher.pretrain) is prepared first and its tokenizer is the student's.
"""

from __future__ import annotations

import json

from absl import app, flags
from etils import epath
from ml_collections import config_flags

from guide_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.')
_WORKDIR = flags.DEFINE_string('workdir', '', 'The run whose teacher (WORKDIR/teacher) '
                               'supplies the tokenizer of a student config.')
flags.mark_flags_as_required(['config'])


def prepare(cfg, workdir: str) -> None:
  from guide_jax import config as config_lib
  from guide_jax.train import teacher as teacher_lib
  if cfg.data.backend in ('synthetic', 'seqio'):
    raise config_lib.ConfigError(f'data.backend={cfg.data.backend!r} has no cache to prepare '
                                 f"(only 'embedded' and 'files' do)")
  if teacher_lib.is_distillation(cfg) and not cfg.data.tokenizer:
    vocab = teacher_lib.vocab_path(cfg, epath.Path(workdir or '.'))
    if vocab is None:  # pretrained later into WORKDIR/teacher: its data and tokenizer first
      vocab = prepare_one(cfg.teacher.pretrain)['tokenizer']
    cfg.data.tokenizer = vocab
  prepare_one(cfg)


def prepare_one(cfg) -> dict:
  from guide_jax import config as config_lib
  from guide_jax.data import pipeline
  try:
    summary = pipeline.prepare(cfg)
  except (ValueError, FileNotFoundError) as e:
    raise config_lib.ConfigError(str(e)) from None
  print(json.dumps(summary), flush=True)
  return summary


def main(argv):
  del argv
  cli.run(lambda: prepare(cli.config_value(_CONFIG), _WORKDIR.value))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
