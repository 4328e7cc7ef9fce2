"""Self-training round after round: each round reads the unlabelled images with the run before
it, and trains from that run on the labels and the readings."""

import csv
import json
import shutil

import ml_collections
import pytest

from captcha_jax import cli, evaluate, synthetic
from captcha_jax import self_train as rounds
from captcha_jax import workdir as run_folder
from captcha_jax.errors import ConfigError
from captcha_jax.predict import Predictor


def _readings(path) -> dict[str, tuple[str, str, str]]:
  """file → (text, raw_text, confidence) of a readings file."""
  with open(path, newline='', encoding='utf-8') as f:
    return {
      row['file']: (row['text'], row['raw_text'], row['confidence']) for row in csv.DictReader(f)
    }


def _expected(teacher, images) -> dict[str, tuple[str, str, str]]:
  """What `teacher` reads of `images`, as `_readings` gives it (confidence to 6 places)."""
  readings = Predictor.from_workdir(teacher).predict(images)
  return {
    str(p.absolute()): (r.text, r.raw_text, f'{r.confidence:.6f}')
    for p, r in zip(images, readings, strict=True)
  }


def _write_readings(path, confidences):
  """A readings file of `confidences`, each of an (empty) image file beside it."""
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, 'w', newline='', encoding='utf-8') as f:
    rows = csv.writer(f)
    rows.writerow(['file', 'text', 'raw_text', 'confidence'])
    for i, confidence in enumerate(confidences):
      (path.parent / f'{path.stem}{i}.png').write_bytes(b'png')  # an empty file is passed over
      rows.writerow([f'{path.stem}{i}.png', 'abc', 'abc', confidence])


def _run_of(workdir, train_images, **config):
  """A run's folder as far as the rounds read it: its split.json, and its config (returned)."""
  workdir.mkdir()
  split = {name: {'images': n} for name, n in (('train', train_images), ('val', 20), ('test', 20))}
  run_folder.write_json(workdir / 'split.json', split)
  model = dict(alphabet='abc', max_label_length=5, image_height=50, image_width=200, model={})
  return ml_collections.ConfigDict(
    dict(pseudo_min_confidence=0.9, pseudo_labels='', **model, **config)
  )


def test_a_round_trains_as_many_steps_as_the_first_run(tmp_path):
  # 160 labels, 40 epochs of 16: 400 steps. 280 readings kept of 300: 440 images, 27 steps an
  # epoch, so 15 epochs (405 steps).
  config = _run_of(tmp_path / 'mine', 160, num_epochs=40, batch_size=16)
  readings = tmp_path / 'mine-round1' / 'readings.csv'
  _write_readings(readings, [0.95] * 280 + [0.5] * 20)
  assert rounds.round_epochs(config, tmp_path / 'mine', readings) == 15
  assert rounds.round_epochs(config, tmp_path / 'mine', readings, restart=True) == 15
  # Thousands of readings: the rounds' epochs are longer than the first run's, and fewer.
  _write_readings(readings, [0.99] * 3000)
  assert rounds.round_epochs(config, tmp_path / 'mine', readings) == 2  # 400 / 197
  # Restarted from the shipped reader, a round needs more than the first run's steps.
  assert rounds.round_epochs(config, tmp_path / 'mine', readings, restart=True) == 8
  # A first run trained on readings of its own: only its labels count towards the rounds'.
  own = tmp_path / 'own' / 'readings.csv'
  _write_readings(own, [0.95] * 100)
  config = _run_of(tmp_path / 'again', 260, num_epochs=10, batch_size=16)
  config.pseudo_labels = str(own)
  _write_readings(readings, [0.95] * 40)
  assert rounds.round_epochs(config, tmp_path / 'again', readings) == 13  # 160 / (200 // 16)
  # Readings of its labelled images and of copies of them (a folder they were copied from) do
  # not join a round, so they do not count towards its epochs.
  folder = tmp_path / 'data'
  images = synthetic.generate(folder, 20, seed=3)
  config = _run_of(tmp_path / 'labelled', 160, num_epochs=40, batch_size=16)
  config.update(data_dir=str(folder), labels_file='', label_pattern='', case='keep')
  scraped = tmp_path / 'scraped'
  scraped.mkdir()
  for i, image in enumerate(images[:10]):
    shutil.copy(image, scraped / f'copy{i}.png')
  _write_readings(readings, [0.95] * 120)
  rows = readings.read_text().splitlines()
  rows += [f'{path},abc,abc,0.95' for path in images + sorted(scraped.iterdir())]
  readings.write_text('\n'.join(rows) + '\n')
  assert rounds.round_epochs(config, tmp_path / 'labelled', readings) == 24  # 400 / (280 // 16)
  shutil.rmtree(folder)  # moved since: the confident readings are all it can count
  assert rounds.round_epochs(config, tmp_path / 'labelled', readings) == 22  # 400 / (290 // 16)


@pytest.mark.parametrize('restart', [False, True])
def test_rounds_chain_their_teachers_and_reuse_readings_already_written(
  tmp_path, monkeypatch, restart
):
  # run_rounds' own logic, with reading and training faked: who reads, and what each round trains.
  first = tmp_path / 'mine'
  config = _run_of(first, 160, num_epochs=40, batch_size=16, init_from='pretrained')
  config.warmup_epochs = 1.0
  run_folder.write_json(first / 'config.json', config.to_dict())
  read_by, trained = [], []
  one, two = rounds.round_dir(first, 1), rounds.round_dir(first, 2)
  with pytest.raises(ConfigError, match='has not finished training'):  # no results.json yet
    rounds.run_rounds(first, [str(one)], rounds=2, restart=restart)
  run_folder.write_json(first / 'results.json', {'val': {'accuracy': 0.4}})

  def write_readings(teacher, unlabelled, out):
    read_by.append(teacher)
    _write_readings(out, [0.95] * 280 + [0.5] * 20)
    return 300

  def train_and_evaluate(config, workdir, after_compile):
    trained.append(config)
    workdir.mkdir(exist_ok=True)
    run_folder.write_json(workdir / 'config.json', config.to_dict())
    run_folder.write_json(workdir / 'results.json', {'val': {'accuracy': 0.5}})
    return {'val': {'accuracy': 0.5}}

  monkeypatch.setattr(rounds, 'write_readings', write_readings)
  monkeypatch.setattr(rounds.train, 'train_and_evaluate', train_and_evaluate)
  # Round 1 was stopped once its readings were written: they are trained on, not read again.
  _write_readings(one / rounds.READINGS, [0.95] * 280 + [0.5] * 20)
  run_folder.write_json(one / rounds.TEACHER, rounds.teacher_of(first))

  unlabelled = [str(one)]  # the images its readings name
  dotted = tmp_path / 'elsewhere' / '..' / 'mine'  # as saved paths hold it: resolved
  assert rounds.run_rounds(dotted, unlabelled, rounds=2, restart=restart) == two
  assert read_by == [one]  # round 2's readings, read by round 1
  assert [c.pseudo_labels for c in trained] == [
    str(one / 'readings.csv'),
    str(two / 'readings.csv'),
  ]
  # 400 steps of the first run, in epochs of (160 + 280) // 16 = 27 steps (at least 8 restarted).
  assert [c.num_epochs for c in trained] == [15, 15]
  if restart:
    assert [(c.init_from, c.warmup_epochs) for c in trained] == [('pretrained', 1.0)] * 2
  else:
    assert [c.init_from for c in trained] == [str(first), str(one)]
    assert [c.warmup_epochs for c in trained] == [rounds.WARMUP_EPOCHS] * 2
  results = (one / 'results.json').read_bytes()
  (one / 'results.json').unlink()  # round 1 stopped half-way, then resumed with other epochs
  with pytest.raises(ConfigError, match=f"'{one}' holds a round begun with another num_epochs"):
    rounds.run_rounds(first, unlabelled, rounds=2, epochs=3, restart=restart)
  (one / 'results.json').write_bytes(results)
  # Run again on other images: the readings written are of the first ones, and are not taken.
  (tmp_path / 'other').mkdir()
  (tmp_path / 'other' / 'abc.png').write_bytes(b'png')
  with pytest.raises(ConfigError, match=r'readings of 300 image\(s\) that --unlabelled does not'):
    rounds.run_rounds(first, [str(tmp_path / 'other')], rounds=2, restart=restart)
  assert len(trained) == 2
  # The first run trained again since: the rounds' readings are its old self's, and refused.
  run_folder.write_json(first / 'results.json', {'val': {'accuracy': 0.6}})
  with pytest.raises(ConfigError, match=f"readings in '{one}' were not read by '{first}' as it"):
    rounds.run_rounds(first, unlabelled, rounds=2, restart=restart)
  assert len(trained) == 2


@pytest.mark.slow
def test_each_round_reads_with_the_run_before_and_trains_from_it(trained, tmp_path, caplog):
  _, trained_dir, _ = trained
  first = tmp_path / 'mine'
  shutil.copytree(trained_dir, first)
  # Every reading joins, however unsure the tiny run is, so the rounds' splits show them.
  saved = json.loads((first / 'config.json').read_text())
  saved['pseudo_min_confidence'] = 0.0
  (first / 'config.json').write_text(json.dumps(saved))
  unlabelled = tmp_path / 'unlabelled'
  images = synthetic.generate(unlabelled, 6, seed=7)
  (unlabelled / 'broken.png').write_bytes(b'not an image')

  last = rounds.run_rounds(first, [str(unlabelled), str(images[0])], rounds=2, epochs=1)

  one, two = rounds.round_dir(first, 1), rounds.round_dir(first, 2)
  assert last == two
  assert len((one / rounds.READINGS).read_text().splitlines()) == 1 + len(images)  # read once
  assert 'broken.png' in caplog.text  # named, and left out
  for teacher, student in ((first, one), (one, two)):
    assert _readings(student / rounds.READINGS) == _expected(teacher, images)
    config = run_folder.read_config(student)
    assert config.init_from == str(teacher)
    assert config.pseudo_labels == str(student / rounds.READINGS)
    assert config.num_epochs == 1
    labelled = json.loads((first / 'split.json').read_text())
    split = json.loads((student / 'split.json').read_text())
    assert split['train']['images'] == labelled['train']['images'] + len(images)
    assert split['val'] == labelled['val'] and split['test'] == labelled['test']
    assert (student / 'results.json').exists()

  # A rerun trains nothing again.
  finished = {p: (p / 'results.json').stat().st_mtime_ns for p in (one, two)}
  assert rounds.run_rounds(first, [str(unlabelled)], rounds=2, epochs=1) == two
  assert {p: (p / 'results.json').stat().st_mtime_ns for p in (one, two)} == finished
  with pytest.raises(ConfigError, match=f"'{one}' holds a round trained with another num_epochs"):
    rounds.run_rounds(first, [str(unlabelled)], rounds=2, epochs=3)
  with pytest.raises(ConfigError, match=f"'{one}' holds a round trained with another init_from"):
    rounds.run_rounds(first, [str(unlabelled)], rounds=2, epochs=1, restart=True)
  # A round is scored on its labels, so also once the unlabelled images have moved away.
  unlabelled.rename(tmp_path / 'moved')
  report = evaluate.evaluate_workdir(two)
  assert {name: report[name]['images'] for name in report} == {
    name: labelled[name]['images'] for name in ('train', 'val', 'test')
  }


@pytest.mark.slow
def test_restarted_rounds_train_from_where_the_first_run_started(trained, tmp_path):
  _, trained_dir, _ = trained
  first = tmp_path / 'mine'
  shutil.copytree(trained_dir, first)
  saved = json.loads((first / 'config.json').read_text())
  # As if the first run had been fine-tuned from `trained_dir`, with a warm-up of its own.
  saved.update(init_from=str(trained_dir), warmup_epochs=0.5, pseudo_min_confidence=0.0)
  (first / 'config.json').write_text(json.dumps(saved))
  unlabelled = tmp_path / 'unlabelled'
  images = synthetic.generate(unlabelled, 4, seed=8)
  # Saved relative, as runs did before they saved it absolute: from which folder is unknown.
  (first / 'config.json').write_text(json.dumps({**saved, 'init_from': 'runs/base'}))
  with pytest.raises(ConfigError, match="started from 'runs/base', relative to the folder"):
    rounds.run_rounds(first, [str(unlabelled)], rounds=1, epochs=1, restart=True)
  assert not rounds.round_dir(first, 1).exists()
  (first / 'config.json').write_text(json.dumps(saved))

  # One round: the chaining of rounds is run_rounds' own, tested above with training faked.
  one = rounds.run_rounds(first, [str(unlabelled)], rounds=1, epochs=1, restart=True)

  assert _readings(one / rounds.READINGS) == _expected(first, images)
  config = run_folder.read_config(one)
  assert (config.init_from, config.warmup_epochs) == (str(trained_dir), 0.5)
  assert config.pseudo_labels == str(one / rounds.READINGS)
  assert (one / 'results.json').exists()


def test_self_train_cli_errors_are_one_line(trained, tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.self_train(['--workdir', str(tmp_path / 'none'), '--unlabelled', str(tmp_path)])
  assert exit_.value.code == cli.EXIT_USER_ERROR
  assert 'has no config.json' in capsys.readouterr().err
  _, trained_dir, _ = trained
  first = tmp_path / 'mine'
  shutil.copytree(trained_dir, first)
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(SystemExit) as exit_:
    cli.self_train(['--workdir', str(first), '--unlabelled', str(empty)])
  assert exit_.value.code == cli.EXIT_USER_ERROR
  err = capsys.readouterr().err
  assert f"Folder '{empty}' holds no images" in err and 'Traceback' not in err
  assert not rounds.round_dir(first, 1).exists()
  with pytest.raises(SystemExit) as exit_:
    cli.self_train(['--workdir', str(first), '--unlabelled', str(empty), '--rounds', '0'])
  assert exit_.value.code == 2
  assert '--rounds must be 1 or more' in capsys.readouterr().err
