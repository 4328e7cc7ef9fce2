"""Starting from another reader: the head's rows follow the characters, everything else carries
over whole; the shipped pretrained reader loads offline; a tiny fine-tuning run trains."""

import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from captcha_jax import checkpoints, cli, models, steps, synthetic, train, transfer
from captcha_jax import workdir as run_folder
from captcha_jax.errors import ConfigError, DataError
from captcha_jax.predict import Predictor
from captcha_jax.vocab import BLANK_ID


def variables_of(config, alphabet: str, seed: int) -> dict:
  """Random variables of the model's shapes (traced, not compiled: the transfer only moves them)."""
  model = models.create_model(config.model, len(alphabet) + 1)
  shapes = jax.eval_shape(
    functools.partial(model.init, train=False),
    jax.random.key(0),
    jax.ShapeDtypeStruct((1, config.image_height, config.image_width, 3), jnp.uint8),
  )
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


def test_head_rows_follow_the_characters():
  # Target 'xbz' against source 'abc': the blank, and 'b' (target 2, source 2); x and z are new.
  assert transfer.head_rows('abc', 'xbz') == {BLANK_ID: BLANK_ID, 2: 2}
  assert transfer.head_rows('abc', 'cab') == {0: 0, 1: 3, 2: 1, 3: 2}


def test_shared_characters_keep_their_rows_and_new_ones_start_fresh(tiny_config):
  source = variables_of(tiny_config, 'abcdef', seed=1)
  target = variables_of(tiny_config, 'fxa', seed=2)
  moved, fresh = transfer.transfer(source, 'abcdef', target, 'fxa')
  assert fresh == ['x']
  head, source_head, target_head = (v['params']['head'] for v in (moved, source, target))
  for target_row, source_row in ((0, 0), (1, 6), (3, 1)):  # blank, f, a
    np.testing.assert_array_equal(
      head['kernel'][:, target_row], source_head['kernel'][:, source_row]
    )
    assert head['bias'][target_row] == source_head['bias'][source_row]
  np.testing.assert_array_equal(head['kernel'][:, 2], target_head['kernel'][:, 2])  # x: fresh
  for name in ('backbone', 'projection', 'rnn'):
    for a, b in zip(
      jax.tree.leaves(moved['params'][name]), jax.tree.leaves(source['params'][name]), strict=True
    ):
      np.testing.assert_array_equal(a, b)


def test_a_reader_of_another_shape_is_refused(tiny_config):
  source = variables_of(tiny_config, 'abc', seed=1)
  wider = tiny_config.copy_and_resolve_references()
  wider.model.rnn_hidden_size = 24
  with pytest.raises(ConfigError, match="another 'rnn' layer"):
    transfer.transfer(source, 'abc', variables_of(wider, 'abc', seed=2), 'abc')


def test_the_shipped_reader_loads_offline_and_reads():
  config, variables = transfer.load_pretrained()
  description = json.loads((transfer.PRETRAINED_DIR / 'reader.json').read_text())
  assert description['command'] and description['config']['alphabet'] == config.alphabet
  size = sum(p.stat().st_size for p in transfer.PRETRAINED_DIR.iterdir())
  assert size < 20e6
  predictor = Predictor(config, variables)
  image, text = synthetic.sample(0, 99, alphabet='0123456789', lengths=(5, 5), style='clean')
  [free] = predictor.predict([image])
  [digits] = predictor.predict([image], allowed='0123456789')
  # '9575l' unrestricted: 'l' and '1' alike in this face; the mask before the argmax reads it
  assert digits.text == text != free.text and 0 <= free.confidence <= 1
  for length in (3, 7):  # shorter and longer than the text: the best path of that length
    [fixed] = predictor.predict([image], allowed='0123456789', length=length)
    assert len(fixed.text) == length and set(fixed.text) <= set('0123456789')
    assert fixed.raw_text == digits.raw_text
  assert Predictor.pretrained().predict([image]) == [free]
  decoded = predictor.decode(image)
  pixels = np.stack([decoded, decoded[:, ::-1], 255 - decoded])
  one_by_one = np.concatenate([predictor.log_probs(p[None]) for p in pixels])
  two_at_a_time = Predictor(config, variables, batch_size=2).log_probs(pixels)  # 2, then 1
  np.testing.assert_allclose(two_at_a_time, one_by_one, atol=1e-4)


def test_a_run_exported_as_a_reader_loads_as_the_shipped_one_does(trained, tmp_path):
  _, workdir, _ = trained
  out = tmp_path / 'reader'
  with pytest.raises(SystemExit) as exit_status:
    cli.export([f'--workdir={workdir}', f'--out={out}', '--format=reader', '--note=made here'])
  assert exit_status.value.code == 0
  with pytest.raises(SystemExit) as exit_status:  # it would hide the run's checkpoints
    cli.export([f'--workdir={workdir}', f'--out={workdir}', '--format=reader'])
  assert exit_status.value.code == 2 and not (workdir / 'reader.json').exists()
  with pytest.raises(ConfigError, match='holds a reader .* train in another --workdir'):
    train.train_and_evaluate(run_folder.read_config(workdir), out)  # nor a run the reader hides
  assert not (out / 'checkpoints').exists()
  config, variables = transfer.load_pretrained(out)
  description = json.loads((out / 'reader.json').read_text())
  assert description['command'] == 'made here' and 0 <= description['validation']['val_cer']
  run = Predictor.from_workdir(workdir)
  assert config.alphabet == run.config.alphabet
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(run.variables), strict=True):
    np.testing.assert_array_equal(a, b)
  # The reader's folder stands for the run wherever a run is read or started from.
  images = sorted(Path(run.config.data_dir).glob('*.png'))[:4]
  assert Predictor.from_workdir(out).predict(images) == run.predict(images)
  assert transfer.source_config(str(out)).alphabet == config.alphabet
  source_config, source_variables = transfer.load_source(str(out))
  assert source_config.to_dict() == config.to_dict()
  assert jax.tree.all(jax.tree.map(np.array_equal, source_variables, variables))
  # A damaged copy is refused, not read into wrong texts.
  weights = (out / 'reader.msgpack').read_bytes()
  middle = len(weights) // 2
  (out / 'reader.msgpack').write_bytes(weights[:middle] + b'\xff' * 64 + weights[middle + 64 :])
  with pytest.raises(DataError, match='reader.msgpack.* is damaged or altered'):
    Predictor.from_workdir(out)
  (out / 'reader.msgpack').write_bytes(weights[:middle])  # cut short
  with pytest.raises(DataError, match='damaged or altered'):
    transfer.load_source(str(out))


def test_a_saved_reader_names_paths_as_they_read_from_here(tiny_config, tmp_path, monkeypatch):
  home, repo = tmp_path / 'home', tmp_path / 'repo'
  repo.mkdir()
  monkeypatch.chdir(repo)
  monkeypatch.setenv('HOME', str(home))
  tiny_config.update(
    init_from=str(repo / 'runs' / 'pretrain'),
    data_dir=str(home / 'captchas'),
    labels_file='/elsewhere/labels.csv',
    download_dir='~/.cache/captcha_jax',
  )
  transfer.save_reader(tiny_config, {'params': {'w': np.zeros(2)}}, tmp_path / 'reader')
  saved = json.loads((tmp_path / 'reader' / 'reader.json').read_text())['config']
  assert saved['init_from'] == 'runs/pretrain' and saved['data_dir'] == '~/captchas'
  assert saved['labels_file'] == '/elsewhere/labels.csv'
  assert saved['download_dir'] == '~/.cache/captcha_jax'
  assert tiny_config.init_from == str(repo / 'runs' / 'pretrain')  # the caller's is untouched


@pytest.mark.slow
def test_fine_tuning_starts_from_a_run_and_trains(trained, tmp_path, captcha_dir, tiny_config):
  source_dir = shutil.copytree(trained[1], tmp_path / 'source')
  tiny_config.update(init_from=str(source_dir), alphabet='auto', num_epochs=1, image_width=0)
  config, _ = train.sources.prepare(tiny_config, lambda h, w: 1000)
  model = models.create_model(config.model, len(config.alphabet) + 1)
  state = steps.create_train_state(config, model, optax.sgd(0.1), jax.random.PRNGKey(0))
  started = steps.start_from_reader(state, config)
  source = Predictor.from_workdir(source_dir).variables['params']
  np.testing.assert_array_equal(
    started.params['rnn']['l0_forward']['hidden_kernel'],
    source['rnn']['l0_forward']['hidden_kernel'],
  )
  np.testing.assert_array_equal(started.ema_params['head']['bias'], started.params['head']['bias'])
  results = train.train_and_evaluate(tiny_config, tmp_path / 'tuned')
  assert np.isfinite(results['val']['loss'])
  shutil.rmtree(source_dir)  # a resume reads the checkpoint, not the reader it started from
  tiny_config.num_epochs = 2
  train.train_and_evaluate(tiny_config, tmp_path / 'tuned')
  assert checkpoints.step_numbers(tmp_path / 'tuned')[0] == 2 * results['best_step']
  for step in checkpoints.step_numbers(tmp_path / 'tuned'):  # every step's metadata damaged:
    (tmp_path / 'tuned' / 'checkpoints' / str(step) / '_CHECKPOINT_METADATA').write_text('')
  with pytest.raises(ConfigError, match='source'):  # it starts over, from the reader (now gone)
    train.train_and_evaluate(tiny_config, tmp_path / 'tuned')


def test_a_model_that_computes_otherwise_is_refused_before_compiling(trained, tiny_config):
  _, source_dir, _ = trained
  tiny_config.init_from = str(source_dir)
  transfer.check_architecture(tiny_config)  # the same model: taken
  tiny_config.model.dropout = 0.3  # not what the weights compute: taken too
  transfer.check_architecture(tiny_config)
  strides = [list(s) for s in tiny_config.model.backbone_strides]
  strides[1] = [1, 1]  # the same kernels, so every weight would load: half the resolution lost
  tiny_config.model.backbone_strides = strides
  with pytest.raises(ConfigError, match='config.model.backbone_strides = .*fine-tune with its'):
    transfer.check_architecture(tiny_config)


def test_fine_tuning_reads_a_narrow_set_at_its_readers_width(trained, tmp_path, tiny_config):
  source_config, source_dir, _ = trained
  synthetic.generate(tmp_path, 20, width=100, height=50, seed=5)  # 64 px wide at 32 px high
  tiny_config.update(data_dir=str(tmp_path), alphabet='auto', image_width=0)
  own, _ = train.sources.prepare(tiny_config, lambda h, w: 1000)
  tiny_config.init_from = str(source_dir)
  tuned, _ = train.sources.prepare(tiny_config, lambda h, w: 1000)
  assert own.image_width == 64 and tuned.image_width == source_config.image_width == 96
  tiny_config.image_width = 72  # a width asked for wins
  assert train.sources.prepare(tiny_config, lambda h, w: 1000)[0].image_width == 72


def test_a_run_saves_the_reader_it_starts_from_by_its_absolute_path(
  tiny_config, tmp_path, monkeypatch
):
  monkeypatch.chdir(tmp_path)
  tiny_config.update(init_from='runs/base', pretrained='~/resnet18.pth')
  config = transfer.absolute_sources(tiny_config)
  assert config.init_from == str(tmp_path / 'runs' / 'base')  # found again from any folder
  assert config.pretrained == str(Path.home() / 'resnet18.pth')
  tiny_config.update(init_from=transfer.PRETRAINED, pretrained='')
  assert transfer.absolute_sources(tiny_config).init_from == 'pretrained'  # the shipped reader


def test_predict_reads_the_length_asked_for(tmp_path, capsys):
  image, _ = synthetic.sample(1, 99, alphabet='0123456789', lengths=(5, 5), style='clean')
  image.save(tmp_path / 'a.png')
  with pytest.raises(SystemExit) as done:
    cli.predict(['--pretrained', '--allowed=0123456789', '--length=7', str(tmp_path / 'a.png')])
  assert done.value.code == 0
  _, text, _ = capsys.readouterr().out.strip().split('\t')
  assert len(text) == 7 and text.isdigit()
  with pytest.raises(SystemExit) as done:
    cli.predict(['--pretrained', '--length=-1', str(tmp_path / 'a.png')])
  assert done.value.code == 2 and '--length must be 0' in capsys.readouterr().err
  with pytest.raises(SystemExit) as done:
    cli.predict(['--pretrained', '--allowed=09?', str(tmp_path / 'a.png')])
  err = capsys.readouterr().err
  assert done.value.code == 2 and "'?' cannot be read" in err and 'Traceback' not in err
