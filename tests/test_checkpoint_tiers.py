"""The local checkpoint tier: which checkpoint a restart takes, and the fall-backs."""

import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from guide_jax import config as config_lib
from guide_jax.train import checkpointing, trainer


def train_cfg(tmp_path, local=True):
  return ml_collections.ConfigDict(dict(
      keep_checkpoints=2, async_checkpoints=False, checkpoint_every=4,
      local_checkpoint_dir=str(tmp_path / 'local') if local else '',
      local_checkpoint_every=2 if local else 0))


def state_at(step):
  return {'params': {'w': jnp.full((4, 8), float(step))},
          'opt_state': {'mu': jnp.full((8,), -float(step))}, 'step': jnp.array(step)}


ABSTRACT = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=jax.sharding.SingleDeviceSharding(
        jax.devices()[0])), jax.eval_shape(lambda: state_at(0)))


def save(ckpts, step, final=False, workdir='run'):
  ckpts.save(step, state_at(step), {'step': step}, {'workdir': workdir}, final=final)


def restored_step(ckpts, workdir='run'):
  found = ckpts.latest({'workdir': workdir})
  if found is None:
    return None
  tier, step, state, data = ckpts.restore(found, ABSTRACT)
  assert data == {'step': step}
  np.testing.assert_array_equal(np.asarray(state['params']['w']), np.full((4, 8), step))
  return ('local' if tier is ckpts.local else 'persistent'), step


def test_the_newest_of_either_tier_is_restored(tmp_path):
  ckpts = checkpointing.RunCheckpoints(tmp_path / 'run', train_cfg(tmp_path))
  for step in range(1, 8):
    if ckpts.due(step):
      save(ckpts, step)
  assert ckpts.persistent.all_steps() == [4]
  assert ckpts.local.all_steps() == [4, 6]  # keep_checkpoints per tier
  assert os.path.isdir(tmp_path / 'local' / 'process_0' / '6')
  assert restored_step(ckpts) == ('local', 6)
  save(ckpts, 7, final=True)  # the end of a run, or a preemption: persistent
  assert restored_step(ckpts) == ('persistent', 7)
  ckpts.close()


def test_a_local_checkpoint_of_another_run_or_damaged_is_passed_over(tmp_path):
  ckpts = checkpointing.RunCheckpoints(tmp_path / 'run', train_cfg(tmp_path))
  for step in (2, 4, 6):
    save(ckpts, step)
  assert restored_step(ckpts, workdir='another_run') == ('persistent', 4)
  step_dir = tmp_path / 'local' / 'process_0' / '6'
  for root, _, files in os.walk(step_dir / 'params'):  # damage every array file
    for name in files:
      if name not in ('_METADATA', '_CHECKPOINT_METADATA'):
        with open(os.path.join(root, name), 'r+b') as f:
          f.truncate(3)
  assert restored_step(ckpts) == ('persistent', 4)
  shutil.rmtree(tmp_path / 'local' / 'process_0' / '6')  # a host that lost its RAM disk
  ckpts.close()
  again = checkpointing.RunCheckpoints(tmp_path / 'run', train_cfg(tmp_path))
  assert again.local.all_steps() == [4]
  assert restored_step(again) == ('persistent', 4)  # local 4 is not newer
  again.close()


def test_a_damaged_local_checkpoint_without_a_persistent_one_is_an_error(tmp_path):
  ckpts = checkpointing.RunCheckpoints(tmp_path / 'run', train_cfg(tmp_path))
  save(ckpts, 2)
  for root, _, files in os.walk(tmp_path / 'local' / 'process_0' / '2' / 'params'):
    for name in files:
      os.remove(os.path.join(root, name))
  with pytest.raises(checkpointing.CheckpointError, match='local checkpoint .*2 is '
                     'unreadable and .*holds none; delete the local one'):
    ckpts.restore(ckpts.latest({'workdir': 'run'}), ABSTRACT)
  ckpts.close()


def test_without_a_local_dir_only_the_persistent_tier_exists(tmp_path):
  ckpts = checkpointing.RunCheckpoints(tmp_path / 'run', train_cfg(tmp_path, local=False))
  assert ckpts.local is None and not ckpts.due(2) and ckpts.due(4)
  save(ckpts, 4)
  assert restored_step(ckpts) == ('persistent', 4)
  ckpts.close()


@pytest.mark.parametrize('fields,message', [
    ({'local_checkpoint_dir': '/dev/shm/x'}, r'set both .* or neither'),
    ({'local_checkpoint_every': 5}, r'set both .* or neither'),
    ({'local_checkpoint_dir': 'gs://b/x', 'local_checkpoint_every': 5}, r"is remote"),
])
def test_local_tier_config_refusals(tiny_config, fields, message):
  tiny_config.train.update(fields)
  with pytest.raises(config_lib.ConfigError, match=r'train.local_checkpoint_dir=.*' + message):
    config_lib.validate(tiny_config, jax.device_count())


@pytest.mark.slow  # ~30 s: three short trainer runs
def test_a_run_resumes_from_its_local_tier_bitwise(tiny_config, tmp_path, capsys):
  """A run stopped without a final save (as by kill -9: its persistent tier is older)
  resumes from the local tier and ends where an uninterrupted run ends."""
  c = tiny_config
  c.train.update(dict(steps=8, log_every=1, eval_every=1000, checkpoint_every=4,
                      local_checkpoint_dir=str(tmp_path / 'local'), local_checkpoint_every=1))
  reference = trainer.train(c, tmp_path / 'reference')['params']
  real_save = checkpointing.RunCheckpoints.save

  def killed_at_6(self, step, *args, final=False):  # dies after step 6, saving nothing more
    if final and step == 6:
      self.close()
      raise KeyboardInterrupt
    real_save(self, step, *args, final=final)

  c.train.local_checkpoint_dir = str(tmp_path / 'local2')
  checkpointing.RunCheckpoints.save = killed_at_6
  try:
    with pytest.raises(KeyboardInterrupt):
      trainer.train(c, tmp_path / 'run', interrupt_at_step=6)
  finally:
    checkpointing.RunCheckpoints.save = real_save
  assert sorted(os.listdir(tmp_path / 'run' / 'checkpoints')) == ['4']
  assert sorted(os.listdir(tmp_path / 'local2' / 'process_0')) == ['5', '6']
  capsys.readouterr()
  resumed = trainer.train(c, tmp_path / 'run')
  assert f'starting at step 6 (restored {tmp_path}/local2/process_0/6 in ' in capsys.readouterr().out
  assert resumed['step'] == 8
  for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(resumed['params'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
