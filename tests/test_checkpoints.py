"""Checkpoint keeping: the latest few and the best by validation, as seen after a restart; and
damaged checkpoints passed over."""

import functools

import numpy as np
import pytest

from captcha_jax import checkpoints
from captcha_jax.errors import DataError


def metrics(accuracy, loss=0.1):
  return {'val_accuracy': accuracy, 'val_cer': 1 - accuracy, 'val_loss': loss}


def test_keeps_latest_and_best_and_finds_best_after_restart(tmp_path):
  manager = checkpoints.checkpoint_manager(tmp_path, keep=2)
  state = {'w': np.arange(3.0)}
  for step, accuracy in enumerate([0.5, 0.95, 0.7, 0.8, 0.6], 1):
    progress = {'epoch': step, 'batch': 0}
    checkpoints.save(manager, step, {'w': state['w'] * step}, progress, metrics(accuracy))
  manager.wait_until_finished()
  manager.close()

  reopened = checkpoints.checkpoint_manager(tmp_path, read_only=True)
  assert reopened.all_steps() == [2, 4, 5]
  assert checkpoints.best_first(reopened) == [2, 5, 4]
  restored, progress = checkpoints.restore(reopened, 2, state)
  np.testing.assert_array_equal(restored['w'], state['w'] * 2)
  assert progress == {'epoch': 2, 'batch': 0}
  np.testing.assert_array_equal(checkpoints.restore_raw(reopened, 5)['w'], state['w'] * 5)


def test_ties_go_to_lower_cer_then_lower_loss():
  assert checkpoints.selection_score(metrics(0.9, 0.2)) > checkpoints.selection_score(
    metrics(0.9, 0.3)
  )
  better_cer = {'val_accuracy': 0.9, 'val_cer': 0.01, 'val_loss': 5.0}
  worse_cer = {'val_accuracy': 0.9, 'val_cer': 0.02, 'val_loss': 0.0}
  assert checkpoints.selection_score(better_cer) > checkpoints.selection_score(worse_cer)


def test_best_of_checkpoints_without_metrics_is_the_latest(tmp_path):
  manager = checkpoints.checkpoint_manager(tmp_path)
  assert checkpoints.best_first(manager) == []
  for step in (3, 5):
    checkpoints.save(manager, step, {'w': np.zeros(2)}, {'loss_sum': 1.0, 'loss_count': step})
  manager.wait_until_finished()
  assert checkpoints.best_first(manager) == [5, 3]


def damage(step_dir):
  """Overwrites every data file of a saved step with garbage of the same size."""
  for path in step_dir.rglob('*'):
    if path.is_file() and 'metadata' not in path.name:
      path.write_bytes(b'\xff' * max(path.stat().st_size, 8))


@pytest.mark.parametrize('move_damaged', [True, False])
def test_a_damaged_checkpoint_falls_back_to_an_earlier_one(tmp_path, caplog, move_damaged):
  manager = checkpoints.checkpoint_manager(tmp_path, keep=3)
  state = {'w': np.arange(4.0)}
  for step in (1, 2, 3):
    checkpoints.save(manager, step, {'w': state['w'] * step}, {}, metrics(0.5))
  manager.wait_until_finished()
  damage(tmp_path / 'checkpoints' / '3')
  restore = functools.partial(checkpoints.restore, manager, state=state)
  step, (restored, _) = checkpoints.first_intact(
    manager, checkpoints.newest_first(manager), restore, move_damaged=move_damaged
  )
  assert step == 2
  np.testing.assert_array_equal(restored['w'], state['w'] * 2)
  assert 'Checkpoint 3' in caplog.text and 'damaged' in caplog.text
  moved = list((tmp_path / 'checkpoints' / 'damaged').glob('3-*')) if move_damaged else []
  assert len(moved) == move_damaged
  assert manager.all_steps() == ([1, 2] if move_damaged else [1, 2, 3])
  if move_damaged:  # the number is free again for the resumed run's save
    checkpoints.save(manager, 3, {'w': state['w'] * 30}, {}, metrics(0.6))
    manager.wait_until_finished()
    np.testing.assert_array_equal(checkpoints.restore(manager, 3, state)[0]['w'], state['w'] * 30)


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
  manager = checkpoints.checkpoint_manager(tmp_path)
  checkpoints.save(manager, 1, {'w': np.zeros(3)}, {}, metrics(0.5))
  manager.wait_until_finished()
  damage(tmp_path / 'checkpoints' / '1')
  restore = functools.partial(checkpoints.restore, manager, state={'w': np.zeros(3)})
  with pytest.raises(DataError, match='No checkpoint in .* can be restored:\n  step 1: '):
    checkpoints.first_intact(manager, [1], restore, move_damaged=False)
