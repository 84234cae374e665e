"""orbax checkpoints: the train state, the data iterator's state, and run metadata.

Items of one step: `params` and `train_state` (optimizer state and step), both
StandardSave and restorable onto any mesh by giving the abstract target the new
NamedShardings; `data` (the iterator state, JSON); `meta` (the config, the model config
and the vocabulary file, JSON). Params are an item of their own so that a teacher is
loaded without its optimizer state.
Nothing here ever deletes a checkpoint that the manager did not write in this run's
retention policy; an unreadable checkpoint is an error, not something to overwrite.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from guide_jax import paths


class CheckpointError(RuntimeError):
  """A checkpoint that is missing or unreadable. The message says what to do."""


class Checkpointer:

  def __init__(self, directory: str | os.PathLike, keep: int, use_async: bool):
    self.directory = paths.workdir_path(directory)
    # The trainer decides when to save (orbax's own interval policy also saves the first
    # step it sees, which a resumed run would then keep).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=use_async)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: dict, data_state: dict, meta: dict) -> None:
    """Save {'params', 'opt_state', 'step'} (once per step; async when configured)."""
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state['params']),
        train_state=ocp.args.StandardSave({'opt_state': state['opt_state'],
                                           'step': state['step']}),
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
        step, params=ocp.args.StandardRestore(abstract_state['params']),
        train_state=ocp.args.StandardRestore({'opt_state': abstract_state['opt_state'],
                                              'step': abstract_state['step']}),
        data=ocp.args.JsonRestore())
    return {'params': restored['params'], **restored['train_state']}, restored['data']

  def restore_params(self, step: int, abstract_params: dict) -> dict:
    """Only the parameters (a teacher: no optimizer state is read)."""
    return self._restore(step, params=ocp.args.StandardRestore(abstract_params))['params']

  def restore_meta(self, step: int) -> dict:
    return self._restore(step, meta=ocp.args.JsonRestore())['meta']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


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
