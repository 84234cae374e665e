"""The one loader of experiment files (experiments/NAME.py, launchers, benchmarks)."""

from __future__ import annotations

import importlib.util
import pathlib

from guide_jax.errors import ConfigError


def load_module(config_path: str | pathlib.Path):
  """The file as a module (for an experiment: its get_config and get_sweep)."""
  path = pathlib.Path(config_path)
  if not path.is_file():
    raise ConfigError(f'--config={str(path)!r} is not a file; pass experiments/NAME.py')
  spec = importlib.util.spec_from_file_location(f'experiment_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
