"""What every command shares: quiet logging, and bad input as one `error:` line, exit 2.

A command module parses its flags and calls one library function inside `run`; the
library raises ConfigError/CheckpointError (or a subclass, like HFError) with a message
naming the field and the fix, and never exits itself.
"""

from __future__ import annotations

import os
import sys
from typing import Callable

from absl import flags, logging

# XLA:CPU options every command runs with, measured on the 2-core CPU against the PyTorch
# peer (benchmarks/README.md): oneDNN for matmuls, ~1.1x on the train step. XLA reads its
# flags when the CPU backend starts, so they are set when a command module imports this
# one, before anything runs; TPU and GPU backends ignore xla_cpu_* flags. A flag already in
# XLA_FLAGS is left as it is (XLA_FLAGS=--xla_cpu_experimental_onednn_custom_call=false
# turns this one off).
XLA_CPU_FLAGS = {'xla_cpu_experimental_onednn_custom_call': 'true'}


def set_xla_cpu_flags() -> None:
  current = os.environ.get('XLA_FLAGS', '')
  added = [f'--{name}={value}' for name, value in XLA_CPU_FLAGS.items()
           if f'--{name}' not in current]
  if added:
    os.environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()


set_xla_cpu_flags()


def _config_error_in(error: BaseException | None):
  """The innermost ConfigError among `error`'s causes (config files raise them at parse)."""
  from guide_jax import config as config_lib
  found = None
  while error is not None:
    if isinstance(error, config_lib.ConfigError):
      found = error
    error = error.__cause__ or error.__context__
  return found


def _last_line(error: BaseException) -> str:
  lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
  message = lines[-1] if lines else type(error).__name__
  if 'Traceback' in str(error):  # config_flags re-raised it with the traceback as text
    message = message.split(': ', 1)[-1]
  return message


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with what goes wrong in it as one `error:` line and exit 2.

  ml_collections loads the config file and applies `--config.x=...` overrides while the
  flags are parsed: a missing file, a syntax error, an override of a field the config
  lacks or of the wrong type, and a ConfigError raised by the file itself
  (experiments/distill_hf.py reads its teacher there) all surface here.
  """
  try:
    return flags.FLAGS(argv)
  except (flags.Error, OSError, SyntaxError, AttributeError, ValueError, TypeError,
          KeyError) as e:
    cause = _config_error_in(e)
    if cause is not None:
      message = _last_line(cause)
    elif isinstance(e, AttributeError):  # ConfigDict: no such field
      message = (f'--config: an override names the field {str(e).strip(chr(34))}, which '
                 f'the config does not have; check it against guide_jax/config.py')
    else:
      message = _last_line(e)
      if not message.startswith(('flag ', '--')):
        message = f'--config: {message} ({type(e).__name__})'
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def config_value(holder):
  """A config flag's value. A config file that could not be read at all surfaces only here
  (config_flags defers it to the first read), as a ConfigError."""
  from guide_jax import config as config_lib
  try:
    value = holder.value
    getattr(value, 'to_dict')  # a failed load is a proxy that raises on first use
    return value
  except OSError as e:
    raise config_lib.ConfigError(f'--{holder.name}: {_last_line(e)}') from None


def run(body: Callable[[], int | None]) -> None:
  """Call `body()`; its int result is the exit status. Bad input: `error: ...`, exit 2; a
  run that diverged: `error: ...`, exit 1."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it touches at INFO
  from guide_jax import errors
  from guide_jax.train import checkpointing, nonfinite
  try:
    status = body()
  except (errors.ConfigError, checkpointing.CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except nonfinite.NonFiniteError as e:  # not bad input: the run failed
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  sys.exit(status or 0)
