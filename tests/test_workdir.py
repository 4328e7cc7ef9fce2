"""A workdir belongs to one run at a time, its files are written whole, and a resume must find
the same model and split, or it is refused."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from captcha_jax import evaluate, train
from captcha_jax import workdir as run_folder
from captcha_jax.errors import ConfigError
from captcha_jax.predict import Predictor
from tests.test_checkpoints import damage


def test_a_second_run_on_a_locked_workdir_is_refused(tmp_path, tiny_config):
  with run_folder.lock(tmp_path):
    with pytest.raises(ConfigError, match=rf"'{tmp_path}' is in use by another run \(process "):
      train.train_and_evaluate(tiny_config, tmp_path)
  assert not (tmp_path / 'config.json').exists()


def test_the_lock_goes_with_a_killed_process(tmp_path):
  holder = subprocess.Popen(
    [
      sys.executable,
      '-c',
      'import sys, time\nfrom pathlib import Path\nfrom captcha_jax import workdir\n'
      'with workdir.lock(Path(sys.argv[1])):\n  print("locked", flush=True)\n  time.sleep(60)\n',
      str(tmp_path),
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout.readline().strip() == 'locked'
  with pytest.raises(ConfigError, match=f'process {holder.pid}'), run_folder.lock(tmp_path):
    pass
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with run_folder.lock(tmp_path):
    pass  # free again


def test_a_failed_write_keeps_the_old_file_whole(tmp_path, monkeypatch):
  path = tmp_path / 'metrics.jsonl'
  run_folder.write_atomic(path, 'old\n')

  def full_disk(*args):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(os, 'fsync', full_disk)
  with pytest.raises(OSError, match='No space'):
    run_folder.write_atomic(path, 'new and much longer\n' * 100)
  assert path.read_text() == 'old\n'
  assert [p.name for p in tmp_path.iterdir()] == ['metrics.jsonl']  # no temporary left


def test_json_outputs_never_hold_nan(tmp_path):
  run_folder.write_json(tmp_path / 'r.json', {'a': float('nan'), 'b': [1.0, float('inf')], 'c': 2})
  text = (tmp_path / 'r.json').read_text()
  assert json.loads(text) == {'a': None, 'b': [1.0, None], 'c': 2}
  assert 'NaN' not in text and 'Infinity' not in text


@pytest.fixture
def copy_of_run(trained, tmp_path):
  config, workdir, results = trained
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)
  return config.copy_and_resolve_references(), copy, results


@pytest.mark.parametrize('name', ['config.json', 'split.json'])
@pytest.mark.parametrize('content', ['[1, 2]', '{}', 'null', '{"train": 3}'])
def test_a_run_file_of_another_shape_is_named_as_damaged(tmp_path, name, content):
  (tmp_path / name).write_text(content)
  read = run_folder.read_config if name == 'config.json' else run_folder.read_split
  with pytest.raises(ConfigError, match=f"'{tmp_path / name}' is damaged: not the"):
    read(tmp_path)


@pytest.mark.parametrize(('key', 'value'), [('batch_size', 16), ('seed', 7), ('split_seed', 3)])
def test_a_resume_that_would_read_its_step_otherwise_is_refused(tmp_path, tiny_config, key, value):
  """The step counter gives the epoch and batch through the batch size, and the batch's images
  through the seed: with either changed, step 6 would resume elsewhere in the data."""
  fingerprint = {'train': ['a.png', 'b.png'], 'val': ['c.png'], 'test': ['d.png']}
  run_folder.save_run_settings(tmp_path, tiny_config, fingerprint)
  run_folder.check_resumable(tmp_path, tiny_config, fingerprint)  # no checkpoint binds it yet
  (tmp_path / 'checkpoints' / '6').mkdir(parents=True)
  changed = tiny_config.copy_and_resolve_references()
  changed.num_epochs += 5  # a longer run resumes
  run_folder.check_resumable(tmp_path, changed, fingerprint)
  assert tiny_config[key] != value
  changed[key] = value
  with pytest.raises(ConfigError, match=f'holds a run with a different {key}: '):
    run_folder.check_resumable(tmp_path, changed, fingerprint)


def test_a_run_that_saved_its_labels_file_relative_resumes_with_it_absolute(tmp_path, tiny_config):
  fingerprint = {'train': ['a.png', 'b.png'], 'val': ['c.png'], 'test': ['d.png']}
  older = tiny_config.copy_and_resolve_references()
  older.update(data_dir=str(tmp_path / 'set'), labels_file='labels.csv')
  run_folder.save_run_settings(tmp_path, older, fingerprint)
  (tmp_path / 'checkpoints' / '6').mkdir(parents=True)
  now = older.copy_and_resolve_references()
  now.labels_file = str(tmp_path / 'set' / 'labels.csv')  # as resolve saves it now
  run_folder.check_resumable(tmp_path, now, fingerprint)
  now.labels_file = str(tmp_path / 'other.csv')
  with pytest.raises(ConfigError, match='different labels_file'):
    run_folder.check_resumable(tmp_path, now, fingerprint)


@pytest.mark.slow
def test_a_line_cut_by_a_crash_does_not_stop_the_rerun(copy_of_run):
  config, workdir, _ = copy_of_run
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write('{"epoch": 4, "step": 24, "train_lo')  # the disk filled up mid-line
  config.num_epochs = 4
  train.train_and_evaluate(config, workdir)
  rows = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in rows] == [1, 2, 3, 4]


@pytest.mark.slow
def test_a_resume_that_would_move_images_between_splits_is_refused(copy_of_run, copy_of):
  config, workdir, _ = copy_of_run
  config.split_seed = 1
  with pytest.raises(ConfigError, match='different split_seed'):
    train.train_and_evaluate(config, workdir)
  config.split_seed = 0
  folder = copy_of(config.data_dir)
  config.data_dir = str(folder)
  with pytest.raises(ConfigError, match='different data_dir'):
    train.train_and_evaluate(config, workdir)
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['data_dir'] != str(folder) and saved['split_seed'] == 0  # left as it was


@pytest.mark.slow
def test_a_run_older_than_a_split_setting_resumes_unless_its_split_moved(copy_of_run, tmp_path):
  """A config.json written before config.pseudo_labels existed: the same data resumes; readings
  added to its training split are refused."""
  config, workdir, _ = copy_of_run
  saved = json.loads((workdir / 'config.json').read_text())
  for key in ('pseudo_labels', 'pseudo_min_confidence'):
    del saved[key]
  (workdir / 'config.json').write_text(json.dumps(saved))
  config.num_epochs = 4
  train.train_and_evaluate(config, workdir)
  image = next(Path(config.data_dir).glob('*.png'))
  readings = tmp_path / 'readings.csv'
  Image.open(image).rotate(180).save(tmp_path / image.name)  # not a copy of a labelled image
  readings.write_text(f'file,text,raw_text,confidence\n{tmp_path / image.name},{image.stem},,1.0\n')
  (workdir / 'config.json').write_text(json.dumps(saved))
  config.pseudo_labels = str(readings)
  with pytest.raises(ConfigError, match=r'different train split \(\d+ → \d+ images\)'):
    train.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_a_changed_folder_is_refused_on_resume(trained, tmp_path, copy_of):
  config, _, _ = trained
  config = config.copy_and_resolve_references()
  config.data_dir = str(copy_of(config.data_dir))
  config.num_epochs = 1
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, workdir)
  victim = sorted(os.listdir(config.data_dir))[0]
  os.remove(os.path.join(config.data_dir, victim))
  config.num_epochs = 2
  with pytest.raises(ConfigError, match=r'different \w+ split \(\d+ → \d+ images\)'):
    train.train_and_evaluate(config, workdir)


@pytest.mark.slow
def test_evaluating_a_run_whose_data_changed_is_refused(tiny_config, copy_of, tmp_path):
  tiny_config.update(data_dir=str(copy_of(Path(tiny_config.data_dir))), num_epochs=1)
  train.train_and_evaluate(tiny_config, tmp_path / 'run')
  evaluate.evaluate_workdir(tmp_path / 'run')
  os.remove(sorted(Path(tiny_config.data_dir).glob('*.png'))[0])
  changed = r'splits otherwise than when it trained \(its (val|test) split \(.*did not train on'
  with pytest.raises(ConfigError, match=changed):
    evaluate.evaluate_workdir(tmp_path / 'run')


@pytest.mark.slow
def test_prediction_falls_back_past_a_damaged_best_checkpoint(copy_of_run, caplog):
  _, workdir, results = copy_of_run
  damage(
    workdir / 'checkpoints' / str(results['best_step']) / 'state'
  )  # its metrics still say best
  predictor = Predictor.from_workdir(workdir)
  assert f'Checkpoint {results["best_step"]}' in caplog.text
  [reading] = predictor.predict([np.full((50, 200, 3), 255, np.uint8)])
  assert 0 <= reading.confidence <= 1


@pytest.mark.slow
def test_training_resumes_past_a_damaged_latest_checkpoint(copy_of_run, caplog):
  config, workdir, _ = copy_of_run
  latest = max(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())
  damage(workdir / 'checkpoints' / str(latest))
  again = train.train_and_evaluate(config, workdir)
  assert f'Checkpoint {latest}' in caplog.text and 'damaged' in caplog.text
  assert list((workdir / 'checkpoints' / 'damaged').iterdir())
  rows = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in rows] == [1, 2, 3]
  assert again['best_step'] in (6, 12, 18)
