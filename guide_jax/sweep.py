"""Sweeps as plain data: one function turns an experiment's sweep into runs.

An experiment file may define `get_sweep(name) -> list[dict]` (big_vision's `get_hyper`
idea): each entry is a dict of dotted config overrides ('train.seed': 1, 'guide.center':
True) plus a 'name' that is also the run's sub-directory ('guide/seed0'). `runs()` turns
that into `Run`s with their config, overrides and workdir. The local study runner
(guide_jax.study) and the cluster launchers (launch/) both use it, so a sweep means the
same runs everywhere.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import posixpath
from typing import Any

import ml_collections


@dataclasses.dataclass(frozen=True)
class Run:
  name: str                    # unique within the sweep; also its workdir below the root
  overrides: dict[str, Any]    # dotted config field -> value
  workdir: str                 # root/name; a string, so gs:// roots keep their '//'
  config: ml_collections.ConfigDict

  def flags(self) -> list[str]:
    """The same run as `python -m guide_jax.main` flags (after --config)."""
    return [f'--config.{k}={v}' for k, v in self.overrides.items()] + [
        f'--workdir={self.workdir}']


def load_module(config_path: str | pathlib.Path):
  """The experiment file as a module (for its get_config and get_sweep)."""
  path = pathlib.Path(config_path)
  if not path.is_file():
    raise FileNotFoundError(f'--config={str(path)!r} is not a file; pass experiments/NAME.py')
  spec = importlib.util.spec_from_file_location(f'experiment_{path.stem}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted fields replaced; an unknown field is a KeyError."""
  config = ml_collections.ConfigDict(config.to_dict())
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('.')
    node = config
    for part in parents:
      node = node[part]
    if leaf not in node:
      raise KeyError(f'sweep override {dotted!r}: the config has no such field')
    node[leaf] = value
  return config


def entries(module, sweep: str) -> list[dict]:
  """`module.get_sweep(sweep)`, checked to exist."""
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'{module.__file__} defines no get_sweep(name); add one')
  return module.get_sweep(sweep)


def runs(base: ml_collections.ConfigDict, sweep_entries: list[dict],
         root: str | pathlib.Path) -> list[Run]:
  """One Run per sweep entry: `base` with the entry's overrides, in root/<name>."""
  out, seen = [], set()
  for entry in sweep_entries:
    entry = dict(entry)
    name = entry.pop('name')
    if name in seen:
      raise ValueError(f'the sweep names run {name!r} twice; names must be unique')
    seen.add(name)
    out.append(Run(name, entry, posixpath.join(str(root), name),
                   apply_overrides(base, entry)))
  return out
