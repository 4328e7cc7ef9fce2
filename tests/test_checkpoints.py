"""Checkpoint keeping: the latest few and the best by validation, as seen after a restart."""

import numpy as np

from captcha_jax import checkpoints


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
  assert checkpoints.best_step(reopened) == 2
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
  assert checkpoints.best_step(manager) is None
  for step in (3, 5):
    checkpoints.save(manager, step, {'w': np.zeros(2)}, {'epoch': 1, 'batch': step})
  manager.wait_until_finished()
  assert checkpoints.best_step(manager) == 5
