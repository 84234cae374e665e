"""What every command shares: quiet logging, and bad input as one `error:` line, exit 2.

A command module parses its flags and calls one library function inside `run`; the
library raises ConfigError/CheckpointError (or a subclass, like HFError) with a message
naming the field and the fix, and never exits itself.
"""

from __future__ import annotations

import sys
from typing import Callable

from absl import flags, logging


def _config_error_in(error: BaseException | None):
  """The innermost ConfigError among `error`'s causes (config files raise them at parse)."""
  from guide_jax import config as config_lib
  found = None
  while error is not None:
    if isinstance(error, config_lib.ConfigError):
      found = error
    error = error.__cause__ or error.__context__
  return found


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, except that a ConfigError raised while a config file is loaded
  (experiments/distill_hf.py reads its teacher there) is one `error:` line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    cause = _config_error_in(e)
    if cause is None:
      raise
    message = str(cause).strip().splitlines()[-1]
    if 'Traceback' in str(cause):  # config_flags re-raised it with the traceback as text
      message = message.split(': ', 1)[-1]
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def run(body: Callable[[], int | None]) -> None:
  """Call `body()`; its int result is the exit status. Bad input: `error: ...`, exit 2."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it touches at INFO
  from guide_jax import config as config_lib
  from guide_jax.train import checkpointing
  try:
    status = body()
  except (config_lib.ConfigError, checkpointing.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  sys.exit(status or 0)
