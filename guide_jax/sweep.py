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
import pathlib
import posixpath
from typing import Any

import ml_collections

from guide_jax.errors import ConfigError


class SweepError(ConfigError):
  """A sweep that cannot run: a missing experiment file, an unknown override or sweep
  name, a duplicate run name. Commands print it as one `error:` line (cli.run)."""


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


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted fields replaced; an unknown field is a SweepError."""
  config = ml_collections.ConfigDict(config.to_dict())
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split('.')
    node = config
    for part in parents:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise SweepError(f'sweep override {dotted!r}: the config has no such field')
    node[leaf] = value
  return config


def entries(module, sweep: str) -> list[dict]:
  """`module.get_sweep(sweep)`, checked to exist (its ValueError, e.g. for an unknown
  sweep name, is a SweepError)."""
  if not hasattr(module, 'get_sweep'):
    raise SweepError(f'{module.__file__} defines no get_sweep(name); add one')
  try:
    return module.get_sweep(sweep)
  except ValueError as e:
    raise SweepError(f'--sweep={sweep}: {e}') from None


def runs(base: ml_collections.ConfigDict, sweep_entries: list[dict],
         root: str | pathlib.Path) -> list[Run]:
  """One Run per sweep entry: `base` with the entry's overrides, in root/<name>."""
  out, seen = [], set()
  for entry in sweep_entries:
    entry = dict(entry)
    name = entry.pop('name')
    if name in seen:
      raise SweepError(f'the sweep names run {name!r} twice; names must be unique')
    seen.add(name)
    out.append(Run(name, entry, posixpath.join(str(root), name),
                   apply_overrides(base, entry)))
  return out


def define_flags() -> None:
  """Command-line flags (defined only when run as a program, so importing is free)."""
  from absl import flags
  flags.DEFINE_string('config', None, 'Experiment file with get_config (and get_sweep).')
  flags.DEFINE_string('sweep', '', 'Name passed to get_sweep(name); empty: one run.')
  flags.DEFINE_string('root', None, 'Workdir root: each run goes to ROOT/<name>.')
  flags.mark_flags_as_required(['config', 'root'])


def main(argv) -> None:
  """Prints the runs, one JSON object a line: {"name", "workdir", "flags"}.

  Launchers that live in another virtual environment (launch/xm_launch.py, whose
  xmanager pins its own protobuf) expand a sweep through this instead of importing the
  experiment file, which needs JAX.
  """
  import json
  from absl import flags
  from guide_jax import cli, experiment_file
  del argv
  FLAGS = flags.FLAGS

  from guide_jax import sweep as lib  # not __main__'s copy: its SweepError is cli.run's

  def body():
    module = experiment_file.load_module(FLAGS.config)
    if FLAGS.sweep:
      out = lib.runs(module.get_config(), lib.entries(module, FLAGS.sweep), FLAGS.root)
    else:
      out = [lib.Run(pathlib.Path(FLAGS.config).stem, {}, FLAGS.root, module.get_config())]
    for run in out:
      print(json.dumps({'name': run.name, 'workdir': run.workdir, 'flags': run.flags()}))

  cli.run(body)


if __name__ == '__main__':
  from absl import app
  from guide_jax import cli
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
