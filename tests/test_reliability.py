"""Reliability: stop signals, kills, half-written checkpoints, non-finite steps, reproducibility,
and random bytes or shapes fed to the loader and the predictor."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from captcha_jax import ctc, data, labelled, models, steps, train
from captcha_jax.errors import Stopped
from captcha_jax.predict import Predictor
from tests.conftest import train_command

ROOT = Path(__file__).resolve().parents[1]
TIME_KEYS = ('epoch_s', 'elapsed_s', 'train_images_per_s')


def rows_of(workdir):
  return [json.loads(x) for x in (Path(workdir) / 'metrics.jsonl').read_text().splitlines()]


def assert_row_close(got: dict, want: dict) -> None:
  """Same keys; numbers equal to 1e-4 relative, text (a collapse warning) exactly."""
  assert got.keys() == want.keys()
  for key, value in want.items():
    if isinstance(value, str):
      assert got[key] == value, key
    else:
      assert got[key] == pytest.approx(value, rel=1e-4), key


def without_times(rows):
  return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def start_and_signal(cmd, workdir, signum, after_rows=1):
  """Starts a training process, sends `signum` once metrics.jsonl has `after_rows` rows."""
  process = subprocess.Popen(
    cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  deadline = time.time() + 120
  path = Path(workdir) / 'metrics.jsonl'
  while time.time() < deadline and process.poll() is None:
    if path.exists() and len(path.read_text().splitlines()) >= after_rows:
      process.send_signal(signum)
      break
    time.sleep(0.05)
  output, _ = process.communicate(timeout=120)
  return process.returncode, output


def rerun(cmd):
  done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def assert_continuous(workdir, epochs):
  """One row per epoch, in order, each 6 steps (48 images / batch 8) after the last."""
  rows = rows_of(workdir)
  assert [r['epoch'] for r in rows] == list(range(1, epochs + 1))
  assert [r['step'] for r in rows] == [6 * e for e in range(1, epochs + 1)]


@pytest.mark.slow
def test_a_stopped_then_killed_run_resumes_each_time(tmp_path, captcha_dir):
  """Ctrl-C saves a checkpoint and says how to resume; SIGKILL of the resumed run leaves its last
  complete checkpoint; the next rerun finishes with no epoch repeated or missing. (SIGTERM, the
  other stop signal, is test_distributed's.)"""
  workdir = tmp_path / 'run'
  cmd = train_command(workdir, captcha_dir, epochs=6)
  code, output = start_and_signal(cmd, workdir, signal.SIGINT)
  assert code != 0 and 'Stopped by SIGINT' in output, output[-2000:]
  assert 'Rerun the same command to resume' in output
  stopped_at = int(re.search(r'saved step (\d+)', output).group(1))
  saved = sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  assert saved[-1] == stopped_at >= 6
  code, _ = start_and_signal(cmd, workdir, signal.SIGKILL, after_rows=len(rows_of(workdir)) + 1)
  assert code == -signal.SIGKILL
  rerun(cmd)
  assert_continuous(workdir, 6)


class StopAfter(train.StopSignals):
  """A stop request after `n` checks (one check per batch): a signal at an exact batch."""

  n = 9  # epoch 1 has 6 batches: stop before batch 3 of epoch 2

  def __enter__(self):
    self.checks = 0
    return self

  def __bool__(self):
    self.checks += 1
    if self.checks > self.n:
      self.name = 'TEST'
    return self.name is not None


@pytest.mark.slow
def test_mid_epoch_stop_resumes_at_the_same_batch(
  tmp_path, tiny_config, trained, monkeypatch, caplog
):
  tiny_config.num_epochs = 3
  workdir = tmp_path / 'run'
  with monkeypatch.context() as m:
    m.setattr(train, 'StopSignals', StopAfter)
    with pytest.raises(Stopped, match='Stopped by TEST at epoch 2, batch 3; saved step 9'):
      train.train_and_evaluate(tiny_config, workdir)
  assert [r['epoch'] for r in rows_of(workdir)] == [1]
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(tiny_config, workdir)
  assert 'Resumed from step 9 (epoch 2, batch 3).' in caplog.text  # where it stopped
  _, reference, _ = trained
  got, want = without_times(rows_of(workdir)), without_times(rows_of(reference))
  assert [r['step'] for r in got] == [6, 12, 18]
  for g, w in zip(got, want, strict=True):
    assert_row_close(g, w)


@pytest.mark.slow
def test_half_written_checkpoint_is_never_restored(tmp_path, trained):
  config, workdir, results = trained
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  # What a kill during an orbax save leaves: a temporary folder that was never renamed.
  partial = copy / 'checkpoints' / '24.orbax-checkpoint-tmp-1795530000'
  (partial / 'state').mkdir(parents=True)
  (partial / 'state' / 'garbage').write_bytes(os.urandom(100))
  again = train.train_and_evaluate(config, copy)
  assert again['best_step'] == results['best_step']
  assert again['test'] == pytest.approx(results['test'])


@pytest.mark.slow
def test_non_finite_examples_are_skipped_by_step_and_named(
  tmp_path, tiny_config, monkeypatch, caplog
):
  """Labels starting with '2' (class 1) get a NaN loss: their steps are skipped, the rest train."""
  real = ctc.ctc_loss

  def poisoned(logits, labels, paddings):
    return jnp.where(labels[:, 0] == 1, jnp.nan, real(logits, labels, paddings))

  monkeypatch.setattr(ctc, 'ctc_loss', poisoned)
  tiny_config.num_epochs = 1
  train.train_and_evaluate(tiny_config, tmp_path / 'run')
  [row] = rows_of(tmp_path / 'run')
  assert row['step'] == 6 and 0 < row['skipped_steps'] < 6
  schedule = steps.make_schedule(tiny_config, 6)  # at the updates made, not the steps counted
  assert row['learning_rate'] == pytest.approx(float(schedule(6 - row['skipped_steps'])))
  named = re.search(r'non-finite loss or gradient: (.*)', caplog.text).group(1).split(', ')
  assert named and all(Path(f).name.startswith('2') for f in named)
  weights = Predictor.from_workdir(tmp_path / 'run').variables
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(weights))  # nothing trained on NaN


@pytest.mark.slow
@pytest.mark.parametrize('policy', ['skip', 'stop'])
def test_training_that_never_has_a_finite_step_stops(tmp_path, tiny_config, monkeypatch, policy):
  real = models.preprocess
  monkeypatch.setattr(models, 'preprocess', lambda images: real(images) * np.nan)
  tiny_config.num_epochs = 2
  tiny_config.nan_policy = policy
  message = 'Non-finite loss.*batch held: .*\\.png' if policy == 'stop' else 'Every step of epoch 1'
  with pytest.raises(train.Diverged, match=message):
    train.train_and_evaluate(tiny_config, tmp_path / 'run')
  assert not (tmp_path / 'run' / 'results.json').exists()


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path, tiny_config, trained):
  _, reference, _ = trained
  tiny_config.num_epochs = 3
  train.train_and_evaluate(tiny_config, tmp_path / 'again')
  assert without_times(rows_of(tmp_path / 'again')) == without_times(rows_of(reference))


def test_split_depends_on_split_seed_only(tiny_config):
  def test_files():
    return data.resolve(tiny_config, lambda h, w: 1000)[1]['test']

  base = test_files()
  tiny_config.seed = 7
  assert test_files() == base
  tiny_config.split_seed = 7
  assert test_files() != base


def test_duplicate_labels_are_both_kept(tmp_path, tiny_config):
  image = Image.new('RGB', (200, 50), 'white')
  image.save(tmp_path / 'bcdef.png')
  image.save(tmp_path / 'bcdef (1).png')
  examples, _ = labelled.find_examples(tiny_config, tmp_path)
  assert [e.text for e in examples] == ['bcdef', 'bcdef']


def test_empty_image_folder_for_prediction(tmp_path, trained):
  _, workdir, _ = trained
  (tmp_path / 'empty').mkdir()
  out = subprocess.run(
    [sys.executable, '-m', 'captcha_jax.predict', f'--workdir={workdir}', str(tmp_path / 'empty')],
    capture_output=True,
    text=True,
    cwd=ROOT,
  )
  assert out.returncode != 0 and 'holds no images' in out.stderr
  assert 'labels_file' not in out.stderr  # a hint for training data, not for images to read
  assert 'Traceback' not in out.stderr


@pytest.mark.slow
@settings(
  max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
  shape=st.tuples(st.integers(1, 80), st.integers(1, 260)),
  channels=st.sampled_from([None, 1, 3, 4]),
  seed=st.integers(0, 2**16),
)
def test_predictor_reads_any_uint8_array(trained, shape, channels, seed):
  """Any array reads as the same picture converted by hand: gray to RGB, alpha laid on white."""
  _, workdir, _ = trained
  predictor = _predictor(workdir)
  full = shape if channels is None else (*shape, channels)
  array = np.random.default_rng(seed).integers(0, 256, full, dtype=np.uint8)
  rgb = np.repeat(array.reshape(*shape, 1), 3, -1) if channels in (None, 1) else array[..., :3]
  if channels == 4:
    alpha = array[..., 3:] / 255.0
    rgb = np.rint(rgb * alpha + 255 * (1 - alpha)).astype(np.uint8)
  by_hand = Image.fromarray(rgb).resize((predictor.width, predictor.height), Image.BILINEAR)
  [prediction] = predictor.predict([array])
  [expected] = predictor.read_pixels(np.asarray(by_hand)[None])
  assert prediction.raw_text == expected.raw_text
  assert prediction.confidence == pytest.approx(expected.confidence, rel=0.05, abs=1e-6)


_PREDICTORS: dict = {}


def _predictor(workdir):
  if workdir not in _PREDICTORS:
    _PREDICTORS[workdir] = Predictor.from_workdir(workdir)
  return _PREDICTORS[workdir]


def test_ctrl_c_outside_the_training_loop_exits_at_once_with_130():
  """While XLA compiles, Ctrl-C used to end in a segfault of the interpreter's teardown."""
  action = (
    'import jax, jax.numpy as jnp\n'
    'from captcha_jax import cli\n'
    'def compiling():\n'
    '  jax.jit(lambda x: jnp.linalg.svd(x @ x.T)[0]).lower(jnp.ones((64, 64))).compile()\n'
    '  raise KeyboardInterrupt\n'
    'cli._run(compiling)\n'
  )
  done = subprocess.run([sys.executable, '-c', action], capture_output=True, text=True)
  assert done.returncode == 130 and done.stderr.strip() == 'Interrupted.', done.stderr[-2000:]
