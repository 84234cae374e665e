"""orbax checkpoints: the train state, the data iterator's state, and run metadata.

Items of one step: `params` and `train_state` (optimizer state and step), both
StandardSave and restorable onto any mesh by giving the abstract target the new
NamedShardings; `data` (the iterator state, JSON); `meta` (the config, the model config
and the vocabulary file, JSON). Params are an item of their own so that a teacher is
loaded without its optimizer state.
Nothing here ever deletes a checkpoint that the manager did not write in this run's
retention policy; an unreadable checkpoint is an error, not something to overwrite.

`RunCheckpoints` adds a local tier (train.local_checkpoint_dir: a RAM disk or local SSD on
each host) beside the persistent one: saved more often, by every process into its own
directory with only its own shards (orbax's emergency-checkpoint layout: no primary
host), and read back first when it is newer, falling back to the persistent tier when
any process's copy is missing or damaged.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint._src.serialization import type_handler_registry, type_handlers

from guide_jax import paths


class CheckpointError(RuntimeError):
  """A checkpoint that is missing or unreadable. The message says what to do."""


class _NoPrimaryHostNotice(logging.Filter):
  """orbax warns at every save without a primary host that it logs no object sizes: by
  design in the local tier, so not worth a line per checkpoint."""

  def filter(self, record: logging.LogRecord) -> bool:
    return 'primary_host=None' not in record.getMessage()


logging.getLogger('absl').addFilter(_NoPrimaryHostNotice())


def _per_process_handlers() -> tuple[ocp.options.MultiprocessingOptions, dict]:
  """Every process writes its own shards and its own metadata (as orbax's emergency
  manager does for its local tier), so that a host's directory alone restores its part."""
  options = ocp.options.MultiprocessingOptions(primary_host=None,
                                               barrier_sync_key_prefix='local')
  def arrays():
    registry = type_handler_registry.create_type_handler_registry((jax.Array, (
        type_handlers.ArrayHandler(primary_host=None, replica_id=None,
                                   use_replica_parallel=False))))
    return ocp.PyTreeCheckpointHandler(use_ocdbt=True, use_zarr3=True,
                                       multiprocessing_options=options,
                                       type_handler_registry=registry)
  json = lambda: ocp.JsonCheckpointHandler(multiprocessing_options=options)
  return options, {'params': arrays(), 'train_state': arrays(), 'data': json(),
                   'meta': json()}


class Checkpointer:
  """One tier: an orbax CheckpointManager over `directory`. `per_process`: the local
  tier's layout (each process a directory of its own, written without a primary host)."""

  def __init__(self, directory: str | os.PathLike, keep: int, use_async: bool,
               per_process: bool = False):
    self.directory = paths.workdir_path(directory)
    self.per_process = per_process
    # The trainer decides when to save (orbax's own interval policy also saves the first
    # step it sees, which a resumed run would then keep).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=use_async)
    handlers = None
    if per_process:
      multiprocessing, handlers = _per_process_handlers()
      options = ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True, enable_async_checkpointing=use_async,
          multiprocessing_options=multiprocessing, save_root_metadata=False,
          enable_per_process_directory_creation=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=handlers)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def _save_tree(self, tree):
    return ocp.args.PyTreeSave(tree) if self.per_process else ocp.args.StandardSave(tree)

  def _restore_tree(self, abstract):
    if not self.per_process:
      return ocp.args.StandardRestore(abstract)
    return ocp.args.PyTreeRestore(abstract, restore_args=ocp.checkpoint_utils.
                                  construct_restore_args(abstract))

  def save(self, step: int, state: dict, data_state: dict, meta: dict) -> None:
    """Save {'params', 'opt_state', 'step'} (once per step; async when configured)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        params=self._save_tree(state['params']),
        train_state=self._save_tree({'opt_state': state['opt_state'], 'step': state['step']}),
        data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)), force=True)

  def _restore(self, step: int, **items):
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types for a damaged directory
      raise CheckpointError(
          f'checkpoint {self.directory}/{step} is unreadable ({type(e).__name__}: '
          f'{str(e).splitlines()[0][:200] if str(e) else ""}); move it away to restart from '
          f'the previous one or use a new --workdir') from e

  def restore(self, step: int, abstract_state: dict):
    """(state, data_state) of `step`, placed per abstract_state's shardings."""
    restored = self._restore(
        step, params=self._restore_tree(abstract_state['params']),
        train_state=self._restore_tree({'opt_state': abstract_state['opt_state'],
                                        'step': abstract_state['step']}),
        data=ocp.args.JsonRestore())
    return {'params': restored['params'], **restored['train_state']}, restored['data']

  def restore_params(self, step: int, abstract_params: dict) -> dict:
    """Only the parameters (a teacher: no optimizer state is read)."""
    return self._restore(step, params=self._restore_tree(abstract_params))['params']

  def restore_meta(self, step: int) -> dict:
    return self._restore(step, meta=ocp.args.JsonRestore())['meta']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _all_processes(flag: bool) -> bool:
  """Whether `flag` holds on every process (each process decides for its own disk)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.all(multihost_utils.process_allgather(np.array([flag]))))


def _common_steps(steps: list[int]) -> list[int]:
  """The steps every process has (a local tier is per host)."""
  if jax.process_count() == 1:
    return steps
  width = max(len(steps), 1)
  width = int(np.max(multihost_utils.process_allgather(np.array([width]))))
  padded = np.full(width, -1, np.int64)
  padded[:len(steps)] = steps
  every = multihost_utils.process_allgather(padded)
  common = set(every[0].tolist())
  for row in every[1:]:
    common &= set(row.tolist())
  return sorted(s for s in common if s >= 0)


class RunCheckpoints:
  """A run's persistent checkpoints (WORKDIR/checkpoints, every train.checkpoint_every
  steps) and, with train.local_checkpoint_dir, its local tier (every
  train.local_checkpoint_every steps, in LOCAL_DIR/process_P on each process).

  `restore` takes the newest checkpoint of either tier: the local one when every process
  has it, it belongs to this workdir, and it reads back; otherwise the persistent one."""

  def __init__(self, workdir, train_cfg):
    self.persistent = Checkpointer(paths.workdir_path(workdir) / 'checkpoints',
                                   train_cfg.keep_checkpoints, train_cfg.async_checkpoints)
    self.directory = self.persistent.directory
    self.every = train_cfg.checkpoint_every
    self.local_every = train_cfg.local_checkpoint_every
    self.local = None
    if train_cfg.local_checkpoint_dir:
      self.local = Checkpointer(
          os.path.join(os.path.expanduser(train_cfg.local_checkpoint_dir),
                       f'process_{jax.process_index()}'),
          train_cfg.keep_checkpoints, train_cfg.async_checkpoints, per_process=True)

  def due(self, step: int) -> bool:
    """Whether `step` is saved by either tier."""
    return step % self.every == 0 or bool(self.local and step % self.local_every == 0)

  def save(self, step: int, state: dict, data_state: dict, meta: dict,
           final: bool = False) -> None:
    """Into the tiers whose interval `step` is (the persistent one too when `final`: the
    end of the run, or a preemption)."""
    if self.local and step % self.local_every == 0:
      self.local.save(step, state, data_state, meta)
    if final or step % self.every == 0:
      self.persistent.save(step, state, data_state, meta)

  def _local_candidate(self, meta: dict) -> int | None:
    """The newest local step newer than the persistent tier's that every process holds
    and that was written by this run (its metadata names the same workdir)."""
    if self.local is None:
      return None
    persistent = self.persistent.latest_step() or 0
    newer = [s for s in _common_steps(self.local.all_steps()) if s > persistent]
    if not newer:
      return None
    try:
      same = self.local.restore_meta(newer[-1]).get('workdir') == meta['workdir']
    except CheckpointError:
      same = False
    return newer[-1] if _all_processes(same) else None

  def latest(self, meta: dict) -> tuple[Checkpointer, int] | None:
    """(tier, step) to resume from, or None for a fresh run; meta['workdir'] identifies
    the run."""
    step = self._local_candidate(meta)
    if step is not None:
      return self.local, step
    latest = self.persistent.latest_step()
    return (self.persistent, latest) if latest is not None else None

  def restore(self, found: tuple[Checkpointer, int], abstract_state: dict):
    """(tier, step, state, data_state) of `found` (from `latest`). A local checkpoint that
    fails to read on any process is passed over for the persistent tier's latest; with
    none there, CheckpointError."""
    tier, step = found
    if tier is self.local:
      try:
        restored, ok = tier.restore(step, abstract_state), True
      except CheckpointError as e:
        logging.warning('local checkpoint %s/%d unreadable (%s); restoring the persistent '
                        'one', tier.directory, step, e)
        restored, ok = None, False
      if _all_processes(ok):
        return (tier, step, *restored)
      tier, step = self.persistent, self.persistent.latest_step()
      if step is None:
        raise CheckpointError(f'the local checkpoint {found[0].directory}/{found[1]} is '
                              f'unreadable and {self.directory} holds none; delete the '
                              f'local one to start the run afresh')
    return (tier, step, *tier.restore(step, abstract_state))

  def close(self) -> None:
    for tier in (self.local, self.persistent):
      if tier is not None:
        tier.close()


class LeafReader:
  """One parameter of a checkpoint at a time, restored onto `sharding` (an export reads a
  model leaf by leaf, so it never holds the whole model). Other leaves are placeholders."""

  def __init__(self, directory: str | os.PathLike, step: int, abstract_params: dict, sharding):
    self.directory, self.step = paths.workdir_path(directory), step
    self._abstract, self._sharding = abstract_params, sharding
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(create=False),
        item_handlers={'params': ocp.PyTreeCheckpointHandler()})

  def read(self, path: tuple[str, ...]):
    def pick(key_path, leaf):
      if tuple(k.key for k in key_path) != tuple(path):
        return ocp.PLACEHOLDER
      return ocp.ArrayRestoreArgs(sharding=self._sharding, global_shape=leaf.shape,
                                  dtype=leaf.dtype)
    restore_args = jax.tree_util.tree_map_with_path(pick, self._abstract)
    item = jax.tree.map(lambda a, r: ocp.PLACEHOLDER if r is ocp.PLACEHOLDER else a,
                        self._abstract, restore_args)
    try:
      restored = self._manager.restore(self.step, args=ocp.args.Composite(
          params=ocp.args.PyTreeRestore(item=item, restore_args=restore_args)))['params']
    except Exception as e:  # orbax raises many types for a damaged directory
      raise CheckpointError(f'checkpoint {self.directory}/{self.step}: parameter '
                            f'{".".join(path)} is unreadable ({type(e).__name__}); move it '
                            f'away or export another --step') from e
    for key in path:
      restored = restored[key]
    return restored

  def close(self) -> None:
    self._manager.close()
