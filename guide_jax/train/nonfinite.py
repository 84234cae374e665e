"""What the trainer does when a step's loss or gradient norm is not finite.

The train step itself never applies such an update (train/steps.py); this is the host's
policy over the steps' `nonfinite` flags, read at the syncs the trainer makes anyway (each
log interval) and before every checkpoint, so no checkpoint is written after a step that
`stop` refuses:

  stop  the run ends at the first non-finite step with one error line naming it; the last
        checkpoint written before it is what a rerun resumes from.
  skip  the update is dropped and counted (train/skipped_steps); the run ends only after
        train.max_skips_in_a_row such steps in a row.
"""

from __future__ import annotations


class NonFiniteError(RuntimeError):
  """The run diverged; the message is one line naming the step and what to change."""


class Guard:

  def __init__(self, mode: str, max_in_a_row: int):
    self.mode, self.max_in_a_row = mode, max_in_a_row
    self.skipped = 0      # since this process started
    self.in_a_row = 0

  def check(self, flags: list[tuple[int, bool]]) -> str | None:
    """`flags`: (step number, non-finite?) for each step since the last check, in order.
    Why the run must end (raise NonFiniteError with it once the step's metrics are
    logged), or None."""
    for step, nonfinite in flags:
      if not nonfinite:
        self.in_a_row = 0
        continue
      if self.mode == 'stop':
        return (
            f'non-finite loss or gradient norm at step {step}; stopped without applying it '
            f'(train.on_nonfinite=stop) and the last checkpoint before it is kept. Lower '
            f'train.learning_rate, set train.grad_clip, or use train.on_nonfinite=skip')
      self.skipped += 1
      self.in_a_row += 1
      if self.in_a_row >= self.max_in_a_row:
        return (
            f'{self.in_a_row} non-finite steps in a row, the last at step {step} '
            f'(train.on_nonfinite=skip, train.max_skips_in_a_row={self.max_in_a_row}); '
            f'the last checkpoint before them is kept. Lower train.learning_rate or set '
            f'train.grad_clip')
    return None
