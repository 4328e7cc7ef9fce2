"""TensorBoard scalars, the evaluation report, and the exported model."""

import importlib.util
import json
import logging
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from captcha_jax import cli, evaluate, export, labelled, sources, synthetic, train
from captcha_jax.errors import ConfigError, DataError
from captcha_jax.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
  """Scalars of TensorBoard event files, read as TFRecords of Event protos, as TensorBoard shows
  them: a session's START event at step s drops the points of step s and later before it."""
  from tensorboardX.proto import event_pb2

  scalars: dict = {}
  for path in sorted(folder.glob('events.out.tfevents.*')):
    blob = path.read_bytes()
    offset = 0
    while offset < len(blob):
      (length,) = struct.unpack('<Q', blob[offset : offset + 8])
      event = event_pb2.Event.FromString(blob[offset + 12 : offset + 12 + length])
      offset += 12 + length + 4
      if event.session_log.status == event_pb2.SessionLog.START:
        scalars = {k: [(s, v) for s, v in p if s < event.step] for k, p in scalars.items()}
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


@pytest.mark.slow
def test_tensorboard_scalars_match_metrics_jsonl(trained):
  _, workdir, _ = trained
  scalars = read_scalars(workdir / 'tensorboard')
  rows = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()]
  numeric = {k for r in rows for k, v in r.items() if isinstance(v, int | float) and k != 'step'}
  assert set(scalars) == numeric and 'val_cer_post' in numeric  # every number, in both places
  for key in numeric:
    assert [s for s, _ in scalars[key]] == [r['step'] for r in rows], key
    np.testing.assert_allclose([v for _, v in scalars[key]], [r[key] for r in rows], rtol=1e-6)


@pytest.mark.slow
def test_a_resumed_run_shows_each_step_once_in_tensorboard(trained, tmp_path):
  config, workdir, _ = trained
  resumed = shutil.copytree(workdir, tmp_path / 'resumed')
  last = max(int(p.name) for p in (resumed / 'checkpoints').iterdir() if p.name.isdigit())
  shutil.rmtree(resumed / 'checkpoints' / str(last))  # its epoch's row was written, then lost
  train.train_and_evaluate(config, resumed)
  rows = [json.loads(x) for x in (resumed / 'metrics.jsonl').read_text().splitlines()]
  scalars = read_scalars(resumed / 'tensorboard')
  assert [s for s, _ in scalars['val_loss']] == [r['step'] for r in rows]
  np.testing.assert_allclose([v for _, v in scalars['val_loss']], [r['val_loss'] for r in rows])


def test_only_the_runs_own_folder_and_list_are_scored_by_its_own_splits(tmp_path):
  folder = tmp_path / 'set'
  synthetic.generate(folder, 3, seed=1)
  (tmp_path / 'zip').mkdir()
  (tmp_path / 'zip' / 'set').symlink_to(folder)  # as a zip unpacks: the folder in another
  (folder / 'labels.csv').write_text('file,text\n')
  config = ml_collections.ConfigDict(
    dict(data_source='folder', data_dir=str(folder), labels_file='', download_dir=str(tmp_path))
  )
  for given in (folder, tmp_path / 'zip'):
    assert evaluate.own_data(config, str(given), 'auto') and evaluate.own_data(
      config, str(given), ''
    )
  assert not evaluate.own_data(config, str(folder), 'labels.csv')
  assert not evaluate.own_data(config, str(tmp_path), 'auto')
  config.labels_file = 'labels.csv'  # as given: relative to the folder
  assert evaluate.own_data(config, str(folder), str(folder / 'labels.csv'))
  assert not evaluate.own_data(config, str(folder), '')  # the names: another set
  config.data_source = 'tfds'  # records made of the folder: its own data still
  assert evaluate.own_data(config, str(folder), 'auto')
  assert not evaluate.own_data(
    config, str(folder), 'auto', label_pattern='^(.+)_'
  )  # read otherwise
  generated = ml_collections.ConfigDict(dict(data_source='synthetic', data_dir='', labels_file=''))
  assert not evaluate.own_data(generated, '.', 'auto')  # no folder of its own


def test_confusions_hand_worked():
  counts = evaluate.confusions(['abcd', 'abd', 'abcde', 'mn'], ['abce', 'abcd', 'abcd', 'nm'])
  m = evaluate.MISSING
  # abce→abcd: e read as d; abcd→abd: c dropped; abcd→abcde: an extra e; nm→mn: the matcher keeps
  # n, so an m appears before it and the trailing m is dropped.
  assert counts == {('e', 'd'): 1, ('c', m): 1, (m, 'e'): 1, (m, 'm'): 1, ('m', m): 1}


@pytest.mark.slow
def test_evaluate_report_agrees_with_training_results(trained):
  _, workdir, results = trained
  report = evaluate.evaluate_workdir(workdir)
  for split in ('train', 'val', 'test'):
    for key in ('accuracy', 'cer', 'accuracy_post', 'cer_post'):
      assert report[split][key] == pytest.approx(results[split][key], abs=1e-9), (split, key)
    wrong = round((1 - report[split]['accuracy']) * report[split]['images'])
    assert len(report[split]['errors']) == wrong
  assert json.loads((workdir / 'evaluation.json').read_text()) == report
  assert 'most frequent errors' in (workdir / 'evaluation.txt').read_text()
  out = subprocess.run(
    [sys.executable, '-m', 'captcha_jax.evaluate', f'--workdir={workdir}'],
    capture_output=True,
    text=True,
    cwd=ROOT,
  )
  assert out.returncode == 0 and out.stdout.startswith('split'), out.stderr[-2000:]


@pytest.mark.slow
def test_evaluating_another_folder_scores_all_of_it_and_keeps_the_runs_report(
  trained, tmp_path, caplog
):
  config, workdir, _ = trained
  evaluate.evaluate_workdir(workdir)
  own = (workdir / 'evaluation.json').read_text()
  other = tmp_path / 'other'
  synthetic.generate(other, 12, seed=9)
  first = sorted(other.glob('*.png'))[0]
  # Labels the model cannot read are scored, as misread: 'a' is not in its alphabet, and it
  # reads 5 characters at most. A file that is not an image is left out, with a warning.
  shutil.copy(first, other / 'aaaaa.png')
  shutil.copy(first, other / '2345678.png')
  (other / 'bcdef.png').write_bytes(b'not an image')
  with caplog.at_level(logging.INFO):
    report = evaluate.evaluate_workdir(workdir, str(other))
  assert list(report) == ['all'] and report['all']['images'] == 14
  # One set, not a train split; and the labels the model cannot read, scored below.
  assert f'Data {other}: all 12 (and 2 whose labels the model cannot read);' in caplog.text
  assert 'Scoring 2 image(s) whose labels the model cannot read' in caplog.text
  assert 'of labels the model cannot read' not in caplog.text  # scored, not skipped
  assert 'images the run trained on' not in caplog.text
  paths = sorted(p for p in other.glob('*.png') if p.name != 'bcdef.png')
  readings = Predictor.from_workdir(workdir).predict(paths)  # read file by file, as a user would
  wrong = {str(p) for p, r in zip(paths, readings, strict=True) if r.raw_text != p.stem}
  assert {e['file'] for e in report['all']['errors']} == wrong
  assert {(e['file'], e['true'], e['read']) for e in report['all']['errors']} == {
    (str(p), p.stem, r.raw_text) for p, r in zip(paths, readings, strict=True) if str(p) in wrong
  }
  counts = evaluate.confusions([r.raw_text for r in readings], [p.stem for p in paths])
  top = [(c['true'], c['read'], c['count']) for c in report['all']['confusions']]
  assert all(counts[t, r] == n for t, r, n in top)
  assert [n for *_, n in top] == sorted(counts.values(), reverse=True)[: len(top)]
  assert report['all']['accuracy'] == pytest.approx(1 - len(wrong) / 14)
  assert {str(other / 'aaaaa.png'), str(other / '2345678.png')} <= wrong
  assert json.loads((workdir / 'evaluation-other.json').read_text()) == report
  assert report['all']['folder'] == str(other)
  assert (workdir / 'predictions-other.png').is_file()
  # Another folder of the same name gets report files of its own; the first is scored in place.
  namesake = tmp_path / 'elsewhere' / 'other'
  shutil.copytree(other, namesake)
  (namesake / 'aaaaa.png').unlink()
  assert evaluate.evaluate_workdir(workdir, str(namesake))['all']['images'] == 13
  assert (
    json.loads((workdir / 'evaluation-elsewhere-other.json').read_text())['all']['images'] == 13
  )
  assert json.loads((workdir / 'evaluation-other.json').read_text()) == report
  assert evaluate.evaluate_workdir(workdir, str(other)) == report
  assert not (workdir / 'evaluation-elsewhere-other-2.json').exists()
  assert (workdir / 'evaluation.json').read_text() == own
  # A copy of the run's own folder: its training images are named as such.
  copies = tmp_path / 'copies'
  shutil.copytree(config.data_dir, copies)
  trained_on = json.loads((workdir / 'split.json').read_text())['train']['images']
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    evaluate.evaluate_workdir(workdir, str(copies))
  assert f'{trained_on} of the 60 images scored are images the run trained on' in caplog.text
  # A run from before config.pseudo_labels existed scores another folder all the same.
  older = tmp_path / 'older'
  shutil.copytree(workdir, older)
  saved = json.loads((older / 'config.json').read_text())
  del saved['pseudo_labels'], saved['pseudo_min_confidence']
  saved['skip_bad_files'] = False  # and one that refused bad files: labels it cannot read score
  (older / 'config.json').write_text(json.dumps(saved))
  assert evaluate.evaluate_workdir(older, str(other)) == report
  # Names either part of which could be the text: the run's 'auto' asks, --label_pattern tells.
  ambiguous = tmp_path / 'ambiguous'
  ambiguous.mkdir()
  for name in ('23456_0001', '34567_0002'):
    shutil.copy(first, ambiguous / f'{name}.png')
  with pytest.raises(ConfigError, match='either could be the text.*--label_pattern'):
    evaluate.evaluate_workdir(workdir, str(ambiguous))
  told = evaluate.evaluate_workdir(workdir, str(ambiguous), label_pattern='^([^_]+)')
  assert {e['true'] for e in told['all']['errors']} <= {'23456', '34567'}
  assert told['all']['images'] == 2
  # A split folder of numbered images (unlabelled) is left out, not scored as misread.
  split = tmp_path / 'split'
  shutil.copytree(other, split / 'train')
  (split / 'test').mkdir()
  for i, path in enumerate(paths[:3]):
    shutil.copy(path, split / 'test' / f'{i + 1:04d}.png')
  assert evaluate.evaluate_workdir(workdir, str(split))['all']['images'] == 14
  # A folder of which the model can read no label (another case, say) is scored all the same.
  unreadable = tmp_path / 'unreadable'
  unreadable.mkdir()
  shutil.copy(first, unreadable / 'aaaaa.png')
  shutil.copy(first, unreadable / 'zzzzz.png')
  report = evaluate.evaluate_workdir(workdir, str(unreadable))
  assert report['all']['images'] == 2 and report['all']['accuracy'] == 0
  too_long = tmp_path / 'too_long'  # or no label short enough
  too_long.mkdir()
  shutil.copy(first, too_long / '2345678.png')
  assert evaluate.evaluate_workdir(workdir, str(too_long))['all']['images'] == 1
  (too_long / '2345678.png').write_bytes(b'not an image')  # nothing to score at all
  with pytest.raises(DataError, match='No usable images'):
    evaluate.evaluate_workdir(workdir, str(too_long))
  # A folder whose texts are in a labels file scores as the same images named by their text.
  listed = tmp_path / 'listed'
  listed.mkdir()
  rows = []
  for i, path in enumerate(paths):
    shutil.copy(path, listed / f'{i:03d}.png')
    rows.append(f'{i:03d}.png,{path.stem}')
  (listed / 'labels.csv').write_text('file,text\n' + '\n'.join(rows) + '\n')
  by_name = evaluate.evaluate_workdir(workdir, str(listed), labels_file='')
  assert by_name['all']['accuracy'] == 0  # '000' is no reading's text
  by_file = evaluate.evaluate_workdir(workdir, str(listed), labels_file='labels.csv')
  assert by_file['all']['images'] == 14
  assert by_file['all']['accuracy'] == pytest.approx(1 - len(wrong) / 14)
  found = evaluate.evaluate_workdir(workdir, str(listed))  # the file that lists the images
  assert found['all'] == by_file['all']
  # A file listing some of the run's own images (its test.csv): one set, not the run's split.
  trained_on = sorted(Path(config.data_dir).glob('*.png'))[:3]
  some = tmp_path / 'some.csv'
  some.write_text(''.join(f'{p},{p.stem}\n' for p in trained_on))
  report = evaluate.evaluate_workdir(workdir, config.data_dir, labels_file=str(some))
  assert list(report) == ['all'] and report['all']['images'] == 3
  assert (workdir / f'evaluation-{Path(config.data_dir).name}-some.json').is_file()


EXPORT_LOADER = """
import sys, numpy as np
from captcha_jax import export
reader = export.load(sys.argv[1])
images = np.load(sys.argv[2])
for n in (1, len(images)):
  print('\\t'.join(r.raw_text for r in reader.predict(images[:n])))
assert not any(m.startswith(('captcha_jax.models', 'flax')) for m in sys.modules), 'model code'
"""


@pytest.mark.slow
def test_export_runs_without_model_code_and_agrees(trained, captcha_dir, tmp_path):
  _, workdir, _ = trained
  out = tmp_path / 'model.bin'
  result = subprocess.run(
    [sys.executable, '-m', 'captcha_jax.export', f'--workdir={workdir}', f'--out={out}'],
    capture_output=True,
    text=True,
    cwd=ROOT,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  predictor = Predictor.from_workdir(workdir)
  images = np.stack([predictor.decode(p) for p in labelled.find_images(captcha_dir)[0][:5]])
  np.save(tmp_path / 'images.npy', images)
  loaded = subprocess.run(
    [sys.executable, '-c', EXPORT_LOADER, str(out), str(tmp_path / 'images.npy')],
    capture_output=True,
    text=True,
    cwd=ROOT,
  )
  assert loaded.returncode == 0, loaded.stderr[-2000:]
  one, five = loaded.stdout.rstrip('\n').split('\n')
  expected = [p.raw_text for p in predictor.predict(list(images))]
  assert five.split('\t') == expected and one == expected[0]
  reader = export.load(out)
  np.testing.assert_allclose(
    reader.log_probs(images),
    np.asarray(predictor._apply(predictor.variables, images)),
    atol=1e-5,
  )
  assert reader.meta['alphabet'] == predictor.config.alphabet
  paths = labelled.find_images(captcha_dir)[0][:5]  # any source, as every reader takes
  got, want = reader.predict(paths, allowed='bcd'), predictor.predict(paths, allowed='bcd')
  assert [r.text for r in got] == [r.text for r in want]
  np.testing.assert_allclose([r.confidence for r in got], [r.confidence for r in want], rtol=1e-4)
  for read in (reader.log_probs, predictor.log_probs):  # floats would be cast, not refused
    with pytest.raises(ValueError, match='Expected uint8 images .*, got float32'):
      read(images.astype(np.float32))


def test_export_rejects_other_and_damaged_files(trained, tmp_path, capsys):
  (tmp_path / 'x.bin').write_bytes(b'not a model')
  with pytest.raises(DataError, match='not a captcha_jax export'):
    export.load(tmp_path / 'x.bin')
  blob = export.export_predictor(Predictor.from_workdir(trained[1]))
  for name, damaged in (
    ('truncated', blob[: len(blob) - 100]),
    ('flipped', blob[:-5000] + bytes([blob[-5000] ^ 0xFF]) + blob[-4999:]),
    ('header', blob[:60] + b'9' + blob[61:]),
  ):
    (tmp_path / name).write_bytes(damaged)
    with pytest.raises(DataError, match='damaged'):
      export.load(tmp_path / name)
  (tmp_path / 'short').write_bytes(blob[:20])
  with pytest.raises(DataError, match="'.*short' is truncated"):
    export.load(tmp_path / 'short')
  old = blob[: len(export.MAGIC)] + struct.pack('<H', 1) + blob[len(export.MAGIC) + 2 :]
  (tmp_path / 'old').write_bytes(old)
  with pytest.raises(DataError, match='format 1; this version reads format 2'):
    export.load(tmp_path / 'old')
  (tmp_path / 'folder').mkdir()  # named before any work, not as a temporary file after it
  with pytest.raises(SystemExit) as done:
    cli.export([f'--workdir={trained[1]}', f'--out={tmp_path / "folder"}'])
  assert done.value.code == 2 and 'is a folder: give a file name' in capsys.readouterr().err


def test_tfds_without_tensorflow_datasets_says_what_to_install(tiny_config, monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util,
    'find_spec',
    lambda name: None if name == 'tensorflow_datasets' else find_spec(name),
  )
  tiny_config.data_source = 'tfds'
  with pytest.raises(ConfigError, match=r"pip install 'captcha-jax\[tfds\]'"):
    sources.prepare(tiny_config, lambda h, w: 1000)


def test_tfds_copy_is_prepared_anew_when_the_folder_changes(captcha_dir, copy_of, tmp_path):
  pytest.importorskip('tensorflow_datasets', reason="pip install 'captcha-jax[tfds]'")
  from configs import tiny

  folder = copy_of(captcha_dir)
  config = tiny.get_config()
  config.update(data_dir=str(folder), data_source='tfds', tfds_data_dir=str(tmp_path / 'tfds'))
  output_steps = lambda h, w: 1000  # noqa: E731
  _, first = sources.prepare(config, output_steps)
  victim = first['train'].paths[0]
  Path(victim).unlink()  # the folder changes: one training image fewer
  _, second = sources.prepare(config, output_steps)
  assert len(second['train']) == len(first['train']) - 1 and victim not in second['train'].paths
  prepared = list((tmp_path / 'tfds' / 'captcha_images').iterdir())
  assert len(prepared) == 2  # one copy per fingerprint
