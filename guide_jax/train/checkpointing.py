"""orbax checkpoints: the train state, the data iterator's state, and run metadata.

Items of one step: `state` (params, optimizer state, step: StandardSave, restorable onto
any mesh by giving the abstract target the new NamedShardings), `data` (the iterator
state, JSON) and `meta` (the config, the model config and the vocabulary file, JSON).
Nothing here ever deletes a checkpoint that the manager did not write in this run's
retention policy; an unreadable checkpoint is an error, not something to overwrite.
"""

from __future__ import annotations

import pathlib

import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint that is missing or unreadable. The message says what to do."""


class Checkpointer:

  def __init__(self, directory: pathlib.Path, keep: int, use_async: bool):
    self.directory = pathlib.Path(directory).absolute()
    # The trainer decides when to save (orbax's own interval policy also saves the first
    # step it sees, which a resumed run would then keep).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=use_async)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: dict, meta: dict) -> None:
    if step in self._manager.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, step: int, abstract_state):
    """(state, data_state, meta) of `step`, the state placed per abstract_state's shardings."""
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for a damaged directory
      raise CheckpointError(
          f'checkpoint {self.directory}/{step} is unreadable ({type(e).__name__}: '
          f'{str(e).splitlines()[0][:200]}); move it away to restart from the previous one '
          f'or use a new --workdir') from e
    return restored['state'], restored['data'], restored['meta']

  def restore_meta(self, step: int) -> dict:
    try:
      return self._manager.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))['meta']
    except Exception as e:
      raise CheckpointError(f'checkpoint {self.directory}/{step} has no readable metadata '
                            f'({type(e).__name__}); move it away or use a new --workdir') from e

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
