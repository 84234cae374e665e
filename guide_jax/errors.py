"""The error every command reports as one `error:` line with exit status 2 (cli.run).

Its own module, importing nothing, so that any module can raise it without importing the
config (and whatever the config imports).
"""


class ConfigError(ValueError):
  """Bad input: a config, flag, file or checkpoint that cannot work; the message names the
  field and what would fix it."""
