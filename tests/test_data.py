"""Data: the split, the settings read from the data, decoding, batches, augmentation, and the
errors bad input gets."""

import functools
import logging
import os
import shutil
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from captcha_jax import batches, data, labelled, models, sources, synthetic
from captcha_jax.errors import ConfigError, DataError
from captcha_jax.vocab import Vocab
from configs import tiny
from tests.conftest import config_for, cut_png, resolve

VOCAB = Vocab('2345678bcdefgmnpwxy')
AUGMENT = ml_collections.ConfigDict(
  dict(
    enabled=True, max_shift_x=4.0, max_shift_y=3.0, max_rotation=3.0, max_scale=0.05, max_shear=0.1
  )
)


def load(folder, **overrides) -> data.Dataset:
  """Every usable image of `folder` as one Dataset (no split)."""
  config = config_for(folder, max_label_length=5, **overrides)
  examples, problems = labelled.find_examples(config, Path(folder))
  labelled.report_problems(problems, str(folder), config.skip_bad_files)
  usable = [e for e in examples if not VOCAB.unknown_chars(e.text) and len(e.text) <= 5]
  return data.load_in_memory(config, {'all': usable})['all']


def spec(size, length=5):
  return data.BatchSpec(size, 32, 96, length)


def test_vocab_round_trip_and_blank():
  ids = VOCAB.encode('226md')
  assert ids == [1, 1, 5, 14, 10]
  assert VOCAB.decode([0, *ids, 0]) == '226md'
  assert VOCAB.num_classes == 20
  with pytest.raises(ValueError, match="outside the alphabet.*'a1'"):
    VOCAB.encode('2a1')
  with pytest.raises(ValueError, match='repeats'):
    Vocab('abca')


def test_a_set_that_comes_split_into_folders_keeps_its_split(tmp_path, caplog):
  def generate(folder: str, count: int, seed: int) -> set[str]:
    paths = synthetic.generate(tmp_path / folder, count, alphabet='0123456789', length=4, seed=seed)
    return {os.path.abspath(p) for p in paths}

  train, test = generate('Train', 60, 1), generate('test', 10, 2)
  caplog.set_level(logging.INFO)
  config = config_for(tmp_path, alphabet='auto', split=(0.7, 0.2, 0.1))
  _, splits = resolve(config)
  paths = {name: {e.path for e in examples} for name, examples in splits.items()}
  assert paths['test'] == test and paths['train'] | paths['val'] == train
  assert len(paths['val']) == round(60 * 0.2 / 0.9)  # drawn from train in config.split's shares
  assert 'Split as the data comes: train from Train/, test from test/; val drawn' in caplog.text
  val = generate('validation', 5, 3)
  _, splits = resolve(config)
  assert [{e.path for e in splits[name]} for name in data.SPLITS] == [train, val, test]
  steps = functools.partial(models.output_steps, config.model)
  _, every = data.resolve(config, steps, one_set=True)
  assert {e.path for e in every['all']} == train | val | test  # another run's set, scored whole
  for i, path in enumerate(sorted(val)):  # a competition's unlabelled images, numbered
    os.rename(path, Path(path).with_name(f'{i + 1:04d}.png'))
  caplog.clear()
  _, splits = resolve(config)
  assert {e.path for e in splits['test']} == test and len(splits['val']) == len(paths['val'])
  assert 'validation holds images named by number, not by their text' in caplog.text
  # A training image copied into test/ under another name is not tested on.
  copied = tmp_path / 'test' / '0000.png'
  shutil.copy(sorted(train)[0], copied)
  _, splits = resolve(config)
  assert {e.path for e in splits['test']} == test
  assert f'{copied} holds the bytes of {sorted(train)[0]}' in caplog.text
  copied.unlink()
  (tmp_path / 'stray.png').write_bytes(Path(sorted(test)[0]).read_bytes())
  assert labelled.split_folders(tmp_path) == {}  # images of its own: the sub-folders are not splits


def test_load_dataset_shapes_and_labels(captcha_dir):
  ds = load(captcha_dir)
  assert len(ds) == 60
  assert ds.images.shape == (60, 32, 96, 3) and ds.images.dtype == np.uint8
  assert ds.texts == tuple(Path(path).stem for path in ds.paths)


def test_split_is_deterministic_disjoint_and_complete():
  a = data.split_indices(940, (0.8, 0.1, 0.1), seed=0)
  b = data.split_indices(940, (0.8, 0.1, 0.1), seed=0)
  c = data.split_indices(940, (0.8, 0.1, 0.1), seed=1)
  assert [len(x) for x in a] == [752, 94, 94]
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[2], c[2])
  assert sorted(np.concatenate(a).tolist()) == list(range(940))


def test_copies_of_an_image_land_in_one_split(captcha_dir, copy_of):
  texts = [f'{i:03d}' for i in range(200)]
  by_text, plain = (
    f(x, (0.8, 0.1, 0.1), 4) for f, x in ((data.split_by_text, texts), (data.split_indices, 200))
  )
  for a, b in zip(by_text, plain, strict=True):
    np.testing.assert_array_equal(a, b)  # distinct texts: the plain split
  folder = copy_of(captcha_dir)
  for path in sorted(folder.glob('*.png'))[::2]:  # a browser's copy of every other image
    shutil.copy(path, folder / f'{path.stem} (1).png')
  _, splits = resolve(config_for(folder, split=(0.6, 0.2, 0.2)))
  texts_of = {name: {e.text for e in examples} for name, examples in splits.items()}
  assert sum(len(examples) for examples in splits.values()) == 90
  assert not texts_of['train'] & (texts_of['val'] | texts_of['test'])
  assert not texts_of['val'] & texts_of['test']


def test_split_too_small_names_the_problem():
  with pytest.raises(DataError, match='1 image.*too few'):
    data.split_indices(1, (0.8, 0.1, 0.1), seed=0)
  with pytest.raises(DataError, match=r'^2 distinct text\(s\) \(of 20 images; .*too few'):
    data.split_by_text(['abcde', 'bcdef'] * 10, (0.8, 0.1, 0.1), seed=0)
  with pytest.raises(DataError, match='summing to 1'):
    data.split_indices(10, (0.8, 0.1), seed=0)


def test_train_batches_fixed_shape_shuffled_reproducibly(captcha_dir):
  ds = load(captcha_dir)
  first = list(batches.train_batches(ds, spec(16), VOCAB, (3,)))
  again = list(batches.train_batches(ds, spec(16), VOCAB, (3,)))
  assert len(first) == 3  # 60 // 16; the remainder waits for the next epoch's shuffle
  for (indices, batch), (same, _) in zip(first, again, strict=True):
    assert batch['image'].shape == (16, 32, 96, 3) and batch['image'].dtype == np.uint8
    np.testing.assert_array_equal(batch['image'], ds.images[indices])  # no augmentation asked
    np.testing.assert_array_equal(indices, same)
  seen = np.concatenate([indices for indices, _ in first])
  assert len(set(seen.tolist())) == 48
  padding = first[0][1]['label_paddings']
  assert padding.shape == (16, 5) and (padding == 0).all()  # every label has 5 symbols


def test_batch_spec_is_the_one_layout(captcha_dir):
  """Host batches, fake batches and the spec's shapes agree entry by entry."""
  ds = load(captcha_dir)
  layout = spec(8)
  _, real = next(batches.train_batches(ds, layout, VOCAB, (0,)))
  fake = layout.random(num_classes=20)
  for batch in (real, fake):
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == layout.shapes()
  assert (fake['labels'] >= 1).all() and (fake['labels'] < 20).all()


def test_augmentation_changes_pixels_but_not_shape(captcha_dir):
  ds = load(captcha_dir)
  plain_indices, plain = next(batches.train_batches(ds, spec(8), VOCAB, (0,)))
  warped_indices, warped = next(batches.train_batches(ds, spec(8), VOCAB, (0,), AUGMENT))
  np.testing.assert_array_equal(plain_indices, warped_indices)
  assert warped['image'].shape == plain['image'].shape
  assert np.abs(warped['image'].astype(float) - plain['image']).mean() > 5


def test_identity_augmentation_is_exact():
  config = ml_collections.ConfigDict(
    dict(max_shift_x=0.0, max_shift_y=0.0, max_rotation=0.0, max_scale=0.0, max_shear=0.0)
  )
  image = np.random.default_rng(0).integers(0, 256, (32, 96, 3), dtype=np.uint8)
  np.testing.assert_array_equal(data.augment_image(image, np.random.default_rng(0), config), image)


@pytest.mark.parametrize(
  'epoch, ramp, strength',
  [(1, 4.0, 0.0), (2, 4.0, 0.25), (5, 4.0, 1.0), (9, 4.0, 1.0), (1, 0.0, 1.0)],
)
def test_augmentation_ramps_up_over_the_first_epochs(epoch, ramp, strength):
  config = ml_collections.ConfigDict(
    dict(enabled=True, ramp_epochs=ramp, max_shift_x=4.0, max_rotation=3.0, max_shear=0.1)
  )
  scaled = data.augment_for_epoch(config, epoch)
  assert scaled.max_shift_x == 4.0 * strength and scaled.max_rotation == 3.0 * strength
  assert scaled.max_shear == pytest.approx(0.1 * strength) and scaled.ramp_epochs == ramp
  assert scaled.enabled == (strength > 0)
  assert config.max_shift_x == 4.0  # the run's config is left as it is


def test_eval_batches_pad_and_mask_the_last_batch(captcha_dir):
  ds = load(captcha_dir)
  stream = list(batches.eval_batches(ds, spec(25), VOCAB))
  assert [b['image'].shape[0] for _, b in stream] == [25, 25, 25]
  assert [int(b['mask'].sum()) for _, b in stream] == [25, 25, 10]
  real = np.concatenate([indices[b['mask'] > 0] for indices, b in stream])
  np.testing.assert_array_equal(real, np.arange(60))


def test_missing_and_empty_folders(tmp_path):
  with pytest.raises(DataError, match="'.*nowhere' .*does not exist.*leave it empty to download"):
    resolve(config_for(tmp_path / 'nowhere'))
  (tmp_path / 'notes.txt').write_text('x')
  with pytest.raises(DataError, match='holds no images.*named by their text'):
    resolve(config_for(tmp_path))


def _add_bad_files(folder):
  (folder / 'nn2x4.png').write_bytes(b'')  # zero bytes
  (folder / 'bbbbb.png').write_bytes(b'this is not a png')
  good = next(folder.glob('*.png')).read_bytes()
  (folder / 'ccccc.png').write_bytes(good[: len(good) // 2])  # truncated
  Image.new('RGB', (200, 50), 'white').save(folder / '2345678.png')  # longer than 5
  (folder / 'sub').mkdir()
  (folder / 'readme.txt').write_text('x')
  (folder / 'gone.png').symlink_to(folder / 'missing-target.png')


def test_bad_files_are_skipped_with_warnings_naming_each(captcha_dir, copy_of, caplog):
  folder = copy_of(captcha_dir)
  _add_bad_files(folder)
  caplog.set_level(logging.INFO)
  config, splits = sources.prepare(
    config_for(folder, max_label_length=5),
    functools.partial(models.output_steps, tiny.get_config().model),
  )
  assert sum(len(ds) for ds in splits.values()) == 60
  counts = ', '.join(f'{name} {len(ds)}' for name, ds in splits.items())
  assert f'Decoded: {counts}.' in caplog.text  # the counts trained on, once files are dropped
  message = '\n'.join(r.getMessage() for r in caplog.records if 'unusable' in r.getMessage())
  for name in ('nn2x4.png', 'bbbbb.png', 'ccccc.png'):
    assert f'{name}' in message
  assert 'not a readable image' in message or 'empty' in message
  assert '2345678.png' in message and 'longer than max_label_length=5' in message
  assert 'sub: a folder' in message and 'readme.txt: not an image' in message
  assert 'gone.png: a link to nothing' in message


def test_stray_files_do_not_pass_unnoticed_into_the_inferred_settings(tmp_path, caplog):
  synthetic.generate(tmp_path, 120, alphabet='0123456789', length=4, width=120, height=40, seed=2)
  (tmp_path / 'Thumbs_db.png').write_bytes(b'')  # an empty file: left out before it counts
  (tmp_path / '._0123.png').write_bytes(b'\x00\x05\x16\x07' * 1024)  # macOS metadata
  gbk = os.fsdecode('中文'.encode('gbk') + b'12.png')  # a Windows zip's name, not UTF-8
  Image.new('RGB', (120, 40), 'white').save(tmp_path / gbk)
  Image.new('RGB', (120, 40), 'white').save(tmp_path / '08145 old.png')  # a name with a note
  Image.new('RGB', (120, 40), 'white').save(tmp_path / '0814_1.png')  # a counter: reads 0814
  (tmp_path / 'broken.png').write_text('<html>Not found</html>')  # its name would set the settings
  caplog.set_level(logging.WARNING)
  config = config_for(tmp_path, alphabet='auto', max_label_length=0, fixed_label_length=-1)
  resolved, _ = resolve(config)
  assert 'Thumbs_db.png: an empty file' in caplog.text
  assert "broken.png' is not a readable image" in caplog.text
  assert "._0123.png: macOS metadata beside '0123.png'" in caplog.text
  assert 'its name is not UTF-8' in caplog.text and resolved.alphabet == ' 0123456789dlo'
  assert resolved.max_label_length == 9 and resolved.fixed_label_length == 0  # '08145 old' did
  assert (
    f'1 of 122 labels are unlike the rest, of a length or with a character under 1% of them '
    f"have: '{tmp_path / '08145 old.png'}' ('08145 old')" in caplog.text
  )
  caplog.clear()
  (tmp_path / '08145 old.png').unlink()
  resolved, _ = resolve(config)
  assert resolved.max_label_length == resolved.fixed_label_length == 4
  assert 'unlike the rest' not in caplog.text
  small = tmp_path / 'small'  # too few names to tell an odd one: every header is read
  synthetic.generate(small, 8, alphabet='0123456789', length=4, width=120, height=40, seed=3)
  (small / 'broken.png').write_text('<html>Not found</html>')
  resolved, _ = resolve(
    config_for(small, alphabet='auto', max_label_length=0, split=(0.5, 0.25, 0.25))
  )
  assert set(resolved.alphabet) <= set('0123456789')
  assert resolved.max_label_length == 4 and "broken.png' is not a readable image" in caplog.text


def test_a_split_left_empty_names_its_files_first(tmp_path, caplog):
  for text in ('abcde', 'bcdef', 'cdefg', 'defgh', 'efghi', 'fghij', 'ghijk', 'hijkl'):
    (tmp_path / f'{text}.png').write_bytes(cut_png())
  caplog.set_level(logging.WARNING)
  config = config_for(tmp_path, alphabet='auto')
  steps = functools.partial(models.output_steps, tiny.get_config().model)
  with pytest.raises(DataError, match=r'None of the \d image\(s\) of the \w+ split decodes'):
    sources.prepare(config, steps)
  assert "abcde.png' is not a readable image" in caplog.text  # the files it points to
  synthetic.generate(tmp_path, 40, alphabet='0123456789', length=5, seed=3)
  for path in tmp_path.glob('[a-z]*.png'):
    path.unlink()
  config.alphabet = '01234'  # the other digits' labels are refused, leaving some split empty
  with pytest.raises(DataError, match='holds no image: its labels were all refused'):
    sources.prepare(config, steps)


def test_bad_files_are_fatal_when_asked(captcha_dir, copy_of):
  folder = copy_of(captcha_dir)
  _add_bad_files(folder)
  with pytest.raises(DataError, match=r'unusable file\(s\)(.|\n)*skip_bad_files=True'):
    resolve(config_for(folder, max_label_length=5, skip_bad_files=False))


def test_process_shards_are_disjoint_and_rebuild_the_global_batch(captcha_dir):
  ds = load(captcha_dir)
  whole = list(batches.train_batches(ds, spec(16), VOCAB, (5, 2), AUGMENT))
  parts = [
    list(batches.train_batches(ds, spec(16), VOCAB, (5, 2), AUGMENT, shard=(p, 4)))
    for p in range(4)
  ]
  for i, (indices, batch) in enumerate(whole):
    np.testing.assert_array_equal(np.concatenate([part[i][0] for part in parts]), indices)
    for key in ('image', 'labels'):
      joined = np.concatenate([part[i][1][key] for part in parts])
      np.testing.assert_array_equal(joined, batch[key])
  resumed = list(batches.train_batches(ds, spec(16), VOCAB, (5, 2), AUGMENT, first_batch=2))
  np.testing.assert_array_equal(resumed[0][1]['image'], whole[2][1]['image'])
  evals = [list(batches.eval_batches(ds, spec(16), VOCAB, shard=(p, 2))) for p in range(2)]
  real = np.concatenate(
    [idx[b['mask'] > 0] for pair in zip(*evals, strict=True) for idx, b in pair]
  )
  np.testing.assert_array_equal(np.sort(real), np.arange(60))


# --- Settings read from the data. ---


def test_settings_are_read_from_the_data(captcha_dir):
  config = config_for(captcha_dir, alphabet='auto', max_label_length=0, fixed_label_length=-1)
  config.image_height, config.image_width = 50, 0
  resolved, splits = resolve(config)
  train_chars = {c for e in splits['train'] for c in e.text}
  assert resolved.alphabet == ''.join(sorted(train_chars))
  assert (resolved.max_label_length, resolved.fixed_label_length) == (5, 5)
  assert (resolved.image_height, resolved.image_width) == (50, 200)  # 200×50 captchas: aspect 4
  steps = models.output_steps(resolved.model, 50, 200)
  assert resolved.blank_prior == round(1 - 5 / steps, 4)  # the share of blank CTC steps
  again, same = resolve(resolved)  # a saved config resolves to itself, with the same split
  assert again.to_dict() == resolved.to_dict() and same == splits


def test_a_fixed_length_the_labels_do_not_have_is_refused(captcha_dir):
  config = config_for(captcha_dir, max_label_length=0, fixed_label_length=4)  # labels of 5
  with pytest.raises(ConfigError, match=r'fixed_label_length = 4, but 60 of the 60 labels .*\.png'):
    resolve(config)


def test_width_keeps_the_aspect_ratio_and_fits_the_longest_label(tmp_path):
  rng = np.random.default_rng(0)
  for _ in range(30):
    text = ''.join(rng.choice(list('0123456789'), size=4))
    Image.new('RGB', (240, 80), 'white').save(tmp_path / f'{text}.png')
  config = config_for(tmp_path, alphabet='auto', max_label_length=0, image_width=0)
  config.image_height = 50
  resolved, _ = resolve(config)
  assert resolved.image_width == 152  # 50 · 240/80 = 150 → the nearest multiple of 8
  long_config = config_for(tmp_path, alphabet='auto', max_label_length=0, image_width=0)
  long_config.image_height = 50
  for i in range(10):
    Image.new('RGB', (60, 80), 'white').save(tmp_path / f'{"1234567890123"[: 3 + i % 9]}x{i}.png')
  resolved, _ = resolve(long_config)
  steps = models.output_steps(long_config.model, 50, resolved.image_width)
  assert steps >= 2 * resolved.max_label_length + 1


def test_variable_lengths_and_a_character_only_test_holds(tmp_path, caplog):
  synthetic.generate(tmp_path, 60, alphabet='abcdef', length=(4, 7), seed=3)
  Image.new('RGB', (200, 50), 'white').save(tmp_path / 'zzzz.png')  # 'z' never in training
  config = config_for(
    tmp_path, alphabet='auto', max_label_length=0, fixed_label_length=-1, split=(0.5, 0.25, 0.25)
  )
  caplog.set_level(logging.WARNING)
  resolved, splits = resolve(config)
  assert resolved.fixed_label_length == 0 and resolved.max_label_length == 7
  assert 'z' not in resolved.alphabet  # zzzz.png fell in val or test with this split
  assert 'zzzz.png' in caplog.text
  assert all('zzzz' not in e.text for split in splits.values() for e in split)


def test_a_character_only_test_holds_is_not_fatal_again_when_the_run_is_resolved_again(tmp_path):
  """With skip_bad_files=False the run's config.json (its alphabet now spelled out) resolves to
  the same split, as evaluation and self-training do; an alphabet given by hand stays strict."""
  synthetic.generate(tmp_path, 60, alphabet='abcdef', length=(4, 7), seed=3)
  Image.new('RGB', (200, 50), 'white').save(tmp_path / 'zzzz.png')
  config = config_for(
    tmp_path,
    alphabet='auto',
    max_label_length=0,
    fixed_label_length=-1,
    split=(0.5, 0.25, 0.25),
    skip_bad_files=False,
  )
  resolved, splits = resolve(config)
  again, splits_again = resolve(resolved)
  assert again.alphabet == resolved.alphabet == 'abcdef'
  assert splits_again == splits
  resolved.alphabet = 'abcdefg'
  with pytest.raises(DataError, match=r"zzzz.png: 'z' is not in the alphabet \(or training\)"):
    resolve(resolved)


def test_labels_typed_in_either_case_are_warned_of(tmp_path, caplog):
  for text in ('AB12C', 'XY9ZQ', 'ab34d', 'q8r7s'):
    Image.new('RGB', (100, 40), 'white').save(tmp_path / f'{text}.png')
  caplog.set_level(logging.WARNING)
  resolve(config_for(tmp_path, split=(0.5, 0.25, 0.25)))
  assert "2 labels are upper-case (like 'AB12C') and 2 lower-case" in caplog.text
  caplog.clear()
  resolve(config_for(tmp_path, split=(0.5, 0.25, 0.25), case='upper'))
  assert 'upper-case' not in caplog.text


def test_a_relative_data_dir_is_saved_absolute(captcha_dir, monkeypatch):
  """A run resumed or evaluated from another folder finds its data."""
  monkeypatch.chdir(captcha_dir.parent)
  resolved, splits = resolve(config_for(captcha_dir.name))
  assert resolved.data_dir == os.path.abspath(captcha_dir)
  assert all(Path(e.path).is_absolute() for e in splits['train'])
  assert (resolved, splits) == resolve(resolved)
