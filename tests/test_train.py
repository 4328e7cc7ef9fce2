"""End to end on synthetic captchas: train, checkpoint, resume, predict; and data parallelism."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from captcha_jax import labelled, metrics, sources, train
from captcha_jax.errors import ConfigError, DataError, Stopped
from captcha_jax.predict import Predictor
from tests.conftest import cpu_devices_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())


def read_rows(workdir):
  return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


@pytest.mark.slow
def test_run_writes_everything(trained):
  _, workdir, results = trained
  rows = read_rows(workdir)
  assert [r['epoch'] for r in rows] == [1, 2, 3]
  assert rows[-1]['step'] == 3 * (48 // 8)
  for split in ('train', 'val', 'test'):
    assert set(results[split]) == {'images', 'loss', 'accuracy', 'cer', 'accuracy_post', 'cer_post'}
  assert json.loads((workdir / 'results.json').read_text()) == results
  for name in ('config.json', 'split.json', 'loss.png', 'predictions.png'):
    assert (workdir / name).stat().st_size > 0
  assert checkpoint_steps(workdir)[-2:] == [12, 18]  # the latest two, plus the best if older
  assert results['best_step'] == 6 * results['best_epoch']


@pytest.mark.slow
def test_resume_continues_exactly(trained, tmp_path):
  """Dropping the last epoch's checkpoint and rerunning reproduces that epoch exactly."""
  config, workdir, _ = trained
  resumed = tmp_path / 'resumed'
  shutil.copytree(workdir, resumed)
  shutil.rmtree(resumed / 'checkpoints' / str(checkpoint_steps(workdir)[-1]))
  train.train_and_evaluate(config, resumed)
  original, again = read_rows(workdir), read_rows(resumed)
  assert [r['epoch'] for r in again] == [1, 2, 3]  # no duplicate or missing epochs
  for key in ('step', 'train_loss', 'val_loss', 'val_accuracy'):
    assert again[2][key] == pytest.approx(original[2][key], rel=1e-5), key


@pytest.mark.slow
def test_a_stop_agreed_at_an_epochs_last_batch_still_validates_it(trained, tmp_path, monkeypatch):
  """Several processes agree on a stop a step late: asked at the epoch's second-to-last batch,
  they stop after its last. That epoch is validated, logged and saved as any other, and the
  resumed run goes on as if never stopped."""
  config, workdir, _ = trained
  steps_per_epoch = read_rows(workdir)[0]['step']
  real_init, asked = train._Loop.__init__, []

  def lagging(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    self.votes_lag = True  # as with several processes

  monkeypatch.setattr(train._Loop, '__init__', lagging)
  monkeypatch.setattr(
    train.StopSignals, '__bool__', lambda self: asked.append(1) or len(asked) >= steps_per_epoch - 1
  )
  with pytest.raises(Stopped, match=f'epoch 1, batch {steps_per_epoch}'):
    train.train_and_evaluate(config, tmp_path / 'run')
  monkeypatch.undo()
  assert [r['epoch'] for r in read_rows(tmp_path / 'run')] == [1]
  train.train_and_evaluate(config, tmp_path / 'run')
  original, again = read_rows(workdir), read_rows(tmp_path / 'run')
  assert [r['epoch'] for r in again] == [1, 2, 3]
  for before, after in zip(original, again, strict=True):
    for key in ('step', 'train_loss', 'val_loss'):
      assert after[key] == pytest.approx(before[key], rel=1e-5), key


@pytest.mark.slow
def test_resume_refuses_another_architecture(trained, tmp_path):
  config, workdir, _ = trained
  other = tmp_path / 'other'
  shutil.copytree(workdir, other)
  config = config.copy_and_resolve_references()
  config.model.rnn_hidden_size = 24
  with pytest.raises(ConfigError, match='different model'):
    train.train_and_evaluate(config, other)


@pytest.mark.slow
def test_predictor_reads_like_evaluation(trained):
  """The Predictor on the test files gives the exact match and CER training reported for them."""
  _, workdir, results = trained
  predictor = Predictor.from_workdir(workdir)
  split = json.loads((workdir / 'split.json').read_text())
  config = predictor.config
  _, splits = sources.prepare(config, lambda h, w: 1000)
  test = splits['test']
  assert split['test']['images'] == len(test)
  from_paths = predictor.predict(list(test.paths))
  from_arrays = predictor.predict(list(test.images))
  assert [p.raw_text for p in from_paths] != [] and all(0 <= p.confidence <= 1 for p in from_paths)
  raw = [p.raw_text for p in from_paths]
  fixed = [p.text for p in from_paths]
  got = metrics.reading_metrics(raw, fixed, test.texts)
  for key, value in got.items():
    assert value == pytest.approx(results['test'][key]), key
  assert from_arrays == from_paths


def run_on_cpu_devices(script: str, devices: int) -> dict:
  """Runs a Python script in a process with `devices` CPU devices; its last line, as JSON."""
  env = cpu_devices_env(devices)
  out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


SPLIT_SCRIPT = textwrap.dedent(
  """
    import json, sys
    sys.path.insert(0, {root!r})
    import jax, numpy as np
    from captcha_jax import labelled, serve
    from captcha_jax.predict import Predictor
    split = Predictor.from_workdir({workdir!r})  # every device
    one = Predictor.from_workdir({workdir!r}, mesh=jax.make_mesh((1,), ('data',)))
    size = split.config.image_height, split.config.image_width
    pixels = [split.decode(p) for p in labelled.find_images({data_dir!r})[0][:40]]
    a, b = split.predict(pixels), one.predict(pixels)  # batches of 32 (split) and 8 (not)
    used = split._log_probs(np.stack(pixels[:33]), split=True).sharding
    serve.warm_up(split, 8)
    compiled = split._apply._cache_size()
    for n in (1, 2, 3, 5, 8) * 3:  # each size on every device in turn
      split.predict(pixels[:n])
    print(json.dumps({{'devices': [split.mesh.size, len(used.device_set)],
                      'compiled_after_warm_up': split._apply._cache_size() - compiled,
                      'texts': [[p.raw_text for p in a], [p.raw_text for p in b]],
                      'confidence': [[p.confidence for p in a], [p.confidence for p in b]]}}))
    """
)


@pytest.mark.slow
def test_predictor_splits_batches_over_devices(trained, captcha_dir):
  """Three CPU devices (batches padded to a multiple of 3) read as one device does, and the
  service's warm-up compiles every batch size it can be given on each of them."""
  _, workdir, _ = trained
  script = SPLIT_SCRIPT.format(root=ROOT, data_dir=str(captcha_dir), workdir=str(workdir))
  result = run_on_cpu_devices(script, 3)
  assert result['devices'] == [3, 3]
  assert result['compiled_after_warm_up'] == 0
  split, one = result['texts']
  assert split == one and len(split) == 40
  np.testing.assert_allclose(*result['confidence'], rtol=1e-4)


@pytest.mark.slow
def test_predict_cli(trained, captcha_dir):
  _, workdir, _ = trained
  image = labelled.find_images(captcha_dir)[0][0]
  out = subprocess.run(
    [sys.executable, '-m', 'captcha_jax.predict', f'--workdir={workdir}', str(image)],
    capture_output=True,
    text=True,
    check=True,
    cwd=ROOT,
  )
  path, text, confidence = out.stdout.strip().split('\t')
  assert path == str(image) and 0 <= float(confidence) <= 1


def test_predict_errors_are_clear(tmp_path, tiny_config):
  with pytest.raises(ConfigError, match='no config.json'):
    Predictor.from_workdir(tmp_path)
  (tmp_path / 'config.json').write_text(tiny_config.to_json())  # a run that saved no checkpoint
  with pytest.raises(ConfigError, match='no checkpoint yet'):
    Predictor.from_workdir(tmp_path)
  out = subprocess.run(
    [sys.executable, '-m', 'captcha_jax.predict', f'--workdir={tmp_path}', 'x.png'],
    capture_output=True,
    text=True,
    cwd=ROOT,
  )
  assert out.returncode != 0 and 'no checkpoint yet' in out.stderr
  assert 'Traceback' not in out.stderr


@pytest.mark.slow
def test_checkpoint_of_another_alphabet_is_refused(trained):
  config, workdir, _ = trained
  predictor = Predictor.from_workdir(workdir)
  other = config.copy_and_resolve_references()
  other.alphabet = 'abc'
  with pytest.raises(ConfigError, match='does not fit the model'):
    Predictor(other, predictor.variables)


def test_label_longer_than_ctc_steps_is_refused(tiny_config, tmp_path):
  tiny_config.image_width = 40  # 5 CTC steps: too few for a label with a repeat
  with pytest.raises(DataError, match='needs 6 CTC steps but the model emits 5'):
    train.train_and_evaluate(tiny_config, tmp_path / 'run')
  assert not (tmp_path / 'run' / 'config.json').exists()


def test_a_train_split_smaller_than_a_batch_is_refused_before_compiling(tiny_config, tmp_path):
  tiny_config.batch_size = 64  # 48 training images of the 60
  with pytest.raises(DataError, match='The train split has 48 image.*fewer than batch_size=64'):
    train.train_and_evaluate(tiny_config, tmp_path / 'run', after_compile=pytest.fail)


def test_collapse_warning():
  assert 'all-blank' in train.collapse_warning(['', '', ''])
  assert 'constant' in train.collapse_warning(['ab', 'ab'])
  assert train.collapse_warning(['ab', 'cd']) is None


def _results(train_read: float, val_read: float) -> dict:
  split = lambda read: {'images': 20, 'accuracy': 0.0, 'accuracy_post': read}  # noqa: E731
  return {'best_epoch': 40, 'train': split(train_read), 'val': split(val_read), 'test': split(0)}


def test_results_warning_says_what_went_wrong_and_what_to_try(tiny_config):
  from configs import finetune

  scratch, tuned = tiny_config, finetune.get_config()
  # Never learned its own training images (read as the readers read: held to the length).
  not_learned = train.results_warning(_results(0.1, 0.0), scratch, 'runs/x')
  assert 'reads 10% of its own training images (validation: 0%)' in not_learned
  assert 'configs/finetune.py' in not_learned
  assert 'configs/finetune.py' not in train.results_warning(_results(0.1, 0.0), tuned, 'runs/x')
  # Learned them by heart.
  by_heart = train.results_warning(_results(1.0, 0.8), tuned, 'runs/x')
  assert 'reads 100% of its training images but 80% of its validation images' in by_heart
  assert '--workdir runs/x --unlabelled' in by_heart
  tuned.pseudo_labels = 'runs/x/readings.csv'  # a round of self-training already
  assert 'more rounds of self-training' in train.results_warning(_results(1, 0.8), tuned, 'runs/y')
  tuned.pseudo_labels = ''
  # Reads well, or close to what it learned: nothing to say.
  assert train.results_warning(_results(1.0, 0.95), tuned, 'runs/x') is None
  assert train.results_warning(_results(0.8, 0.75), tuned, 'runs/x') is None
  # Pre-training on generated captchas has no labels to add.
  tuned.data_source = 'synthetic'
  assert train.results_warning(_results(0.1, 0.0), tuned, 'runs/x') is None


STEP_SCRIPT = textwrap.dedent(
  """
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, {root!r})
    from captcha_jax import batches, data, models, sources, steps, train
    from captcha_jax.vocab import Vocab
    from configs import tiny
    config = tiny.get_config()
    config.data_dir = {data_dir!r}
    config.model.dropout = 0.0  # each device draws its own masks
    config.ema_decay = 0.0
    config, splits = sources.prepare(config, lambda h, w: 1000)
    vocab = Vocab(config.alphabet)
    sharded = {sharded!r}
    axis_name = steps.DATA_AXIS if sharded else None
    model = models.create_model(config.model, vocab.num_classes, axis_name=axis_name)
    schedule = steps.make_schedule(config, 10)
    state = steps.create_train_state(
        config, model, steps.make_optimizer(config, schedule), jax.random.PRNGKey(0))
    mesh = steps.make_mesh()
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    step = steps.compile_steps(config, mesh, state)[0] if sharded else jax.jit(steps.train_step)
    losses = []
    spec = data.BatchSpec.of(config, 8)
    for _, batch in batches.train_batches(splits['train'], spec, vocab, (0,), workers=0):
      votes = steps.stop_votes(False, mesh)
      state, m = step(state, steps.to_device(batch, mesh), votes)
      losses.append(float(m['loss']))
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(state.params)])
    print(json.dumps({{'devices': jax.device_count(), 'losses': losses,
                      'params': flat[::97].tolist()}}))
    """
)


@pytest.mark.slow
def test_eight_devices_give_the_same_steps_as_one(captcha_dir):
  """The per-device step (shard_map, BatchNorm over the mesh) against a plain jit on one device."""

  def run(devices, sharded):
    script = STEP_SCRIPT.format(root=ROOT, data_dir=str(captcha_dir), sharded=sharded)
    return run_on_cpu_devices(script, devices)

  one, eight = run(1, sharded=False), run(8, sharded=True)
  assert (one['devices'], eight['devices']) == (1, 8)
  np.testing.assert_allclose(eight['losses'], one['losses'], rtol=1e-4)
  np.testing.assert_allclose(eight['params'], one['params'], atol=1e-4)


def test_train_cli_reports_bad_data_without_a_traceback(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'captcha_jax.train',
      '--config=configs/tiny.py',
      f'--workdir={tmp_path}/run',
      f'--config.data_dir={tmp_path}/missing',
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
  )
  assert out.returncode != 0
  assert f"error: Data folder '{tmp_path}/missing' (config.data_dir) does not exist" in out.stderr
  assert 'Traceback' not in out.stderr


@pytest.mark.slow
def test_variable_lengths_train_evaluate_and_predict(tmp_path, tiny_config):
  """Labels of 4 to 7 characters in one set: read from the data, no fixed-length correction."""
  from captcha_jax import evaluate, synthetic

  folder = tmp_path / 'set'
  synthetic.generate(folder, 80, alphabet='abcdefgh', length=(4, 7), seed=5)
  tiny_config.update(
    data_dir=str(folder), alphabet='auto', max_label_length=0, fixed_label_length=-1, num_epochs=2
  )
  tiny_config.image_width = 0  # 200×50 images: 32 px high → 128 wide, 16 steps ≥ 2·7 + 1
  results = train.train_and_evaluate(tiny_config, tmp_path / 'run')
  saved = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert saved['alphabet'] == 'abcdefgh' and saved['max_label_length'] == 7
  assert saved['fixed_label_length'] == 0 and saved['image_width'] == 128
  for split in ('train', 'val', 'test'):
    # No correction to a fixed length: post-processed readings are the raw ones.
    assert results[split]['accuracy_post'] == results[split]['accuracy']
    assert results[split]['cer_post'] == results[split]['cer']  # no length changed either
  report = evaluate.evaluate_workdir(tmp_path / 'run')
  assert report['test']['cer'] == pytest.approx(results['test']['cer'])
  readings = Predictor.from_workdir(tmp_path / 'run').predict(sorted(folder.glob('*.png')))
  assert all(r.text == r.raw_text for r in readings)


@pytest.mark.slow
def test_bfloat16_compute_trains_the_tiny_model(tmp_path, tiny_config):
  tiny_config.model.dtype = 'bfloat16'
  tiny_config.num_epochs = 3
  train.train_and_evaluate(tiny_config, tmp_path / 'run')
  rows = [json.loads(x) for x in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert all(r['skipped_steps'] == 0 for r in rows)
  assert rows[-1]['train_loss'] < rows[0]['train_loss']  # it learns
  variables = Predictor.from_workdir(tmp_path / 'run').variables
  import jax

  assert all(x.dtype == np.float32 for x in jax.tree.leaves(variables))  # float32 master weights


@pytest.mark.slow
def test_pretraining_scores_its_train_split_on_images_it_trained_on(
  tmp_path, tiny_config, monkeypatch
):
  import ml_collections

  from captcha_jax import batches

  tiny_config.update(data_source='synthetic', max_label_length=5, fixed_label_length=0)
  tiny_config.synthetic = ml_collections.ConfigDict(
    dict(seed=4, lengths=(3, 5), style='clean', case='keep', font_dirs=(), train_images=16)
  )
  tiny_config.synthetic.eval_images = 8
  trained_on, scored = set(), {}
  real_batches, real_evaluate = batches.train_batches, train.evaluate_split

  def train_batches(source, *args, **kwargs):
    trained_on.update(source.paths)
    return real_batches(source, *args, **kwargs)

  def evaluate_split(eval_step, state, source, *args):
    scored.setdefault(id(source), list(source.paths))
    return real_evaluate(eval_step, state, source, *args)

  monkeypatch.setattr(batches, 'train_batches', train_batches)
  monkeypatch.setattr(train, 'evaluate_split', evaluate_split)
  results = train.train_and_evaluate(tiny_config, tmp_path / 'run')
  assert len(trained_on) == 32 and results['train']['images'] == 16
  train_paths = [paths for paths in scored.values() if paths[0].startswith('synthetic:4:')]
  assert train_paths and set(train_paths[-1]) <= trained_on  # its metrics: images it learned
