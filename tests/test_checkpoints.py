"""Checkpoint keeping: the latest few and the best by validation, as seen after a restart; and
damaged checkpoints passed over."""

import functools
import logging

import numpy as np
import pytest

from captcha_jax import checkpoints
from captcha_jax.errors import DataError


def metrics(accuracy, loss=0.1):
  return {'val_accuracy': accuracy, 'val_cer': 1 - accuracy, 'val_loss': loss}


def test_keeps_latest_and_best_and_finds_best_after_restart(tmp_path, caplog):
  manager = checkpoints.checkpoint_manager(tmp_path, keep=2)
  state = {'w': np.arange(3.0)}
  for step, accuracy in enumerate([0.5, 0.95, 0.7, 0.8, 0.6], 1):
    progress = {'epoch': step, 'batch': 0}
    checkpoints.save(manager, step, {'w': state['w'] * step}, progress, metrics(accuracy))
  manager.wait_until_finished()
  manager.close()

  reopened = checkpoints.checkpoint_manager(tmp_path)
  assert reopened.all_steps() == [2, 4, 5]
  assert checkpoints.reading_order(tmp_path) == [2, 5, 4]
  restored, progress = checkpoints.restore(reopened, 2, state)
  np.testing.assert_array_equal(restored['w'], state['w'] * 2)
  assert progress == {'epoch': 2, 'batch': 0}
  caplog.clear()
  np.testing.assert_array_equal(checkpoints.restore_raw(tmp_path, 5)['w'], state['w'] * 5)
  assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_ties_go_to_lower_cer_then_lower_loss():
  assert checkpoints.selection_score(metrics(0.9, 0.2)) > checkpoints.selection_score(
    metrics(0.9, 0.3)
  )
  better_cer = {'val_accuracy': 0.9, 'val_cer': 0.01, 'val_loss': 5.0}
  worse_cer = {'val_accuracy': 0.9, 'val_cer': 0.02, 'val_loss': 0.0}
  assert checkpoints.selection_score(better_cer) > checkpoints.selection_score(worse_cer)


def test_wilson_interval_against_its_closed_form_and_the_normal_one():
  assert checkpoints.wilson_lower(1.0, 20) == pytest.approx(20 / 24)  # n / (n + z²) at p = 1
  assert checkpoints.wilson_lower(1.0, 94) == pytest.approx(94 / 98)
  assert checkpoints.wilson_lower(0.0, 20) == 0.0
  # Many images: close to the normal interval p − 2√(p(1−p)/n).
  normal = 0.95 - 2 * np.sqrt(0.95 * 0.05 / 100_000)
  assert checkpoints.wilson_lower(0.95, 100_000) == pytest.approx(normal, abs=1e-4)
  assert checkpoints.wilson_lower(0.7, 0) == 0.7


def test_the_newest_step_within_the_best_ones_interval_is_read():
  def history(accuracies, images):
    return {step: {**metrics(a), 'val_images': images} for step, a in enumerate(accuracies, 1)}

  # 20 images: 15 of 20 admits down to 0.527, so 11 of 20 (0.55) and not 10 of 20.
  assert checkpoints.wilson_lower(0.75, 20) == pytest.approx(0.5267, abs=1e-4)
  assert checkpoints.chosen_step(history([0.65, 0.75, 0.7, 0.55], 20)) == 4
  assert checkpoints.chosen_step(history([0.65, 0.75, 0.55, 0.5], 20)) == 3
  assert checkpoints.chosen_step(history([0.7, 0.75, 0.5, 0.45], 20)) == 2
  # 20 of 20 admits down to 0.833: a perfect early epoch does not hold back the end.
  assert checkpoints.chosen_step(history([0.9, 1.0, 0.85, 0.8], 20)) == 3
  # 1,000 images: 0.95 admits down to 0.934, so 0.94 and not 0.93.
  assert checkpoints.chosen_step(history([0.5, 0.95, 0.94, 0.8], 1000)) == 3
  assert checkpoints.chosen_step(history([0.5, 0.95, 0.93, 0.8], 1000)) == 2
  # Saved before the image count was: equals only, the newest.
  assert checkpoints.chosen_step(history([1.0, 0.9, 1.0, 0.99], 0)) == 3
  assert checkpoints.chosen_step({}) is None


def test_a_step_saved_on_a_stop_signal_goes_once_it_is_not_among_the_latest(tmp_path):
  manager = checkpoints.checkpoint_manager(tmp_path, keep=2)
  saves = [(10, 0.5), (15, None), (20, 0.9), (30, 0.6), (35, None), (40, 0.7), (50, 0.6)]
  for step, accuracy in saves:
    checkpoints.save(manager, step, {'w': np.zeros(2)}, {}, accuracy and metrics(accuracy))
    manager.wait_until_finished()
    if step == 35:
      assert manager.all_steps() == [20, 30, 35]  # the stopped step is the latest: kept
  assert manager.all_steps() == [20, 40, 50]
  manager.close()


def test_best_of_checkpoints_without_metrics_is_the_latest(tmp_path):
  manager = checkpoints.checkpoint_manager(tmp_path)
  assert checkpoints.reading_order(tmp_path) == []
  for step in (3, 5):
    checkpoints.save(manager, step, {'w': np.zeros(2)}, {'loss_sum': 1.0, 'loss_count': step})
  manager.wait_until_finished()
  assert checkpoints.reading_order(tmp_path) == [5, 3]


def damage(step_dir):
  """Overwrites every file of a saved step with garbage of the same size, its metadata too."""
  for path in step_dir.rglob('*'):
    if path.is_file():
      path.write_bytes(b'\xff' * max(path.stat().st_size, 8))


def save_three(tmp_path, state):
  manager = checkpoints.checkpoint_manager(tmp_path, keep=3)
  for step in (1, 2, 3):
    checkpoints.save(manager, step, {'w': state['w'] * step}, {}, metrics(0.5 + step / 10))
  manager.wait_until_finished()
  manager.close()


def test_a_damaged_checkpoint_is_set_aside_and_an_earlier_one_restored(tmp_path, caplog):
  state = {'w': np.arange(4.0)}
  save_three(tmp_path, state)
  damage(tmp_path / 'checkpoints' / '3')
  assert checkpoints.resumable_steps(tmp_path) == [2, 1]
  checkpoints.set_aside_unopenable(tmp_path)  # orbax's manager could not open the folder
  manager = checkpoints.checkpoint_manager(tmp_path, keep=3)
  assert manager.all_steps() == [1, 2]
  (tmp_path / 'checkpoints' / '2' / 'state' / 'manifest.ocdbt').write_bytes(b'\xff' * 64)
  restore = functools.partial(checkpoints.restore, manager, state=state)
  aside = []
  step, (restored, _) = checkpoints.first_intact([2, 1], restore, 'run', aside.append)
  assert (step, aside) == (1, [2])
  np.testing.assert_array_equal(restored['w'], state['w'])
  assert 'Checkpoint 3' in caplog.text and 'Checkpoint 2 in run is damaged' in caplog.text
  assert [p.name.split('-')[0] for p in (tmp_path / 'checkpoints' / 'damaged').iterdir()] == ['3']
  checkpoints.save(manager, 3, {'w': state['w'] * 30}, {}, metrics(0.6))  # its number is free
  manager.wait_until_finished()
  np.testing.assert_array_equal(checkpoints.restore(manager, 3, state)[0]['w'], state['w'] * 30)


def test_reading_passes_over_damaged_steps_without_a_manager(tmp_path):
  state = {'w': np.arange(4.0)}
  save_three(tmp_path, state)
  assert checkpoints.reading_order(tmp_path) == [3, 2, 1]
  damage(tmp_path / 'checkpoints' / '3')
  step, raw = checkpoints.first_intact(
    checkpoints.reading_order(tmp_path), functools.partial(checkpoints.restore_raw, tmp_path), 'x'
  )
  assert step == 2
  np.testing.assert_array_equal(raw['w'], state['w'] * 2)
  assert (tmp_path / 'checkpoints' / '3').exists()  # reading moves nothing


def test_no_intact_checkpoint_is_a_clear_error(tmp_path):
  save_three(tmp_path, {'w': np.zeros(3)})
  for step in (1, 2, 3):
    damage(tmp_path / 'checkpoints' / str(step))
  aside = []
  restore = functools.partial(checkpoints.restore_raw, tmp_path)
  with pytest.raises(DataError, match=r'can be restored \(none was moved\):\n  step 3: '):
    checkpoints.first_intact([3, 2, 1], restore, 'run', aside.append)
  assert aside == []  # a rerun finds them all again, not an empty folder to start over in
